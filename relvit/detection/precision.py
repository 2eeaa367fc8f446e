"""Box coordinates and scores in float32 when a detector runs under bf16 autocast.

Detection runs under bf16 autocast on CUDA (`relvit.detection.train`), and torchvision's R-CNNs
follow the dtype of their inputs: `AnchorGenerator` makes the anchors in the feature maps' dtype
and `BoxCoder.decode` computes the boxes in the dtype of the predicted offsets. In bf16 (8
significant bits) a coordinate above 128 px is a multiple of 1 px, above 256 px of 2 px, and the
boxes are scaled back to the original image in bf16 too: on a 1242-px KITTI image every
coordinate landed on a 4-8 px grid, and perfect predictions so rounded scored 90 mAP, not 100.
The scores, rounded to 3 digits, tie in the ranking that AP is computed from.

Here the anchors are float32, and so are the small layers that predict offsets and scores (the
RPN head's two 1x1 convolutions, the box predictor's two linear layers): every box is decoded,
clipped, matched and rescaled in float32. The backbone, FPN, the RPN's 3x3 convolution and the
box and mask heads keep bf16. Parameters and state-dict keys are torchvision's, and without
autocast nothing changes.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RPNHead


class Float32Anchors(AnchorGenerator):
    """torchvision's `AnchorGenerator` whose anchors are float32 whatever the maps' dtype."""

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        # stand-ins with the maps' shapes and device, float32, one element of memory each
        shapes = [torch.empty((), device=f.device).expand(f.shape) for f in feature_maps]
        return super().forward(image_list, shapes)


class Float32RPNHead(RPNHead):
    """torchvision's `RPNHead`, its objectness and offsets computed in float32."""

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, offsets = [], []
        for feature in x:
            t = self.conv(feature)
            with torch.autocast(t.device.type, enabled=False):
                t = t.float()
                logits.append(self.cls_logits(t))
                offsets.append(self.bbox_pred(t))
        return logits, offsets


class Float32BoxPredictor(FastRCNNPredictor):
    """torchvision's `FastRCNNPredictor` (class scores, box offsets) computed in float32."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())
