"""Datasets: one registry of specs, loaders, and batched tensor augmentation."""
