"""Backbones, SSL heads and the RelViT model."""
