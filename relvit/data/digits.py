"""The embedded dataset: scikit-learn's 1,797 real 8x8 handwritten digits, upscaled to RGB.

Upscaling is bilinear: at 16x16 with patch 4 about 1 % of patches have an exact twin in the same
image (13 % at 32x32), so a position-free encoder can learn the relation task.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from relvit.data.loading import Splits, TensorSplit, image_statistics

SPLIT_SEED = 0  # the train/test split is fixed, whatever the run's seed
TEST_FRACTION = 0.2
CLASSES = [str(d) for d in range(10)]


@lru_cache(maxsize=4)
def load_digits_splits(image_size: int) -> Splits:
    """Stratified 80/20 split (1,437 / 360 images) at `image_size` x `image_size`, RGB, in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear",
                           align_corners=False).clamp_(0, 1).expand(-1, 3, -1, -1).contiguous()
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(
        torch.arange(len(labels)).numpy(), test_size=TEST_FRACTION,
        random_state=SPLIT_SEED, stratify=labels.numpy(),
    )
    train = TensorSplit(images[torch.from_numpy(train_idx)], labels[torch.from_numpy(train_idx)])
    test = TensorSplit(images[torch.from_numpy(test_idx)], labels[torch.from_numpy(test_idx)])
    mean, std = image_statistics(train)
    return Splits(train=train, evals={"test": test}, classes=CLASSES, mean=mean, std=std)
