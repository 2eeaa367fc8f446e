"""relvit: a reproduction of RelViT (BMVC 2022) and its follow-up."""

__version__ = "0.1.0"
