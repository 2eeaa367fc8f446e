"""Self-supervised signals of RelViT: targets, patch grids, permutation, mega-patches, jitter."""

from relvit.ssl.targets import (
    angle_targets,
    distance_targets,
    position_targets,
    relation_targets,
)

__all__ = ["angle_targets", "distance_targets", "position_targets", "relation_targets"]
