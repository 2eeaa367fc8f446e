"""The benchmark's image sizes and presets."""

from __future__ import annotations

# (dataset of the registry, image side, ViT patch): CIFAR-10 ViT-S/4 and ImageNet-style ViT-S/16
CONFIGS = (("cifar10", 32, 4), ("imagenet100", 224, 16))


PRESETS = {  # CPU: sized for 2 cores; GPU: the paper's ViT-S and batch
    "cpu": dict(batch=16, embed_dim=96, depth=2, num_heads=3, steps=3, warmup=1,
                pipeline_batch=64, decode_images=128, reference_images=4, memory_dim=36,
                loop_batches=2),
    "gpu": dict(batch=256, embed_dim=384, depth=12, num_heads=6, steps=20, warmup=3,
                pipeline_batch=256, decode_images=2048, reference_images=8, memory_dim=384,
                loop_batches=4),
}

