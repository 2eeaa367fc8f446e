"""Detection (Tables 2-3): COCO-format data, backbone pyramids in torchvision R-CNNs, evaluation."""
