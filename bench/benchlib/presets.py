"""The benchmark's image sizes and presets."""

from __future__ import annotations

# (dataset of the registry, image side, ViT patch): CIFAR-10 ViT-S/4 and ImageNet-style ViT-S/16.
# The dataset gives the augmentation and statistics only: the 224-px patch is issue 6's N = 196
# target, not the registry's (Table 1 runs ImageNet-100 and ImageNet-1K as ViT-S/32, N = 49).
CONFIGS = (("cifar10", 32, 4), ("imagenet100", 224, 16))


PRESETS = {  # CPU: sized for 2 cores; GPU: the paper's ViT-S and batch
    "cpu": dict(batch=16, embed_dim=96, depth=2, num_heads=3, steps=3, warmup=1,
                pipeline_batch=64, decode_images=128, reference_images=4, memory_dim=36,
                loop_batches=2),
    "gpu": dict(batch=256, embed_dim=384, depth=12, num_heads=6, steps=20, warmup=3,
                pipeline_batch=256, decode_images=2048, reference_images=8, memory_dim=384,
                loop_batches=4),
}

PRESET_HELP = {  # what each preset key sizes (its option --KEY overrides the preset)
    "batch": "train steps and loop: the batch",
    "embed_dim": "train steps and loop: the ViT's width",
    "depth": "train steps and loop: the ViT's blocks",
    "num_heads": "train steps and loop: the ViT's attention heads",
    "steps": "train steps: timed steps per case",
    "warmup": "train steps: untimed steps before them",
    "pipeline_batch": "decode, augmentation and SSL inputs: images per batch",
    "decode_images": "decode: images decoded",
    "reference_images": "SSL inputs: images through the per-sample torchvision reference",
    "memory_dim": "memory stage: the relation head's input width (batch: --memory-batch)",
    "loop_batches": "train loop: batches in its epoch",
}
