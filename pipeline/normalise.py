"""The ImageNet colour statistics every network input is normalised by, in [0, 1] units: the loader (DALI, on
0..255 pixels) and evaluation (torch) must agree, or a backbone sees other colours at evaluation than in training."""

from __future__ import annotations

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB
IMAGENET_STD = (0.229, 0.224, 0.225)
