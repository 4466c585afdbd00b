"""Images in: the reference's image -> tensor conversion (and, later, background removal and recentring)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor


def image_to_tensor(image: Image.Image, size: int) -> Tensor:
    """PIL image -> [1, 3, size, size] float32 in [0, 1], exactly as OpenLRM's `infer_single`.

    RGBA is composited over white (rgb * a + 1 - a), then resized with bicubic `align_corners=True` (no antialiasing;
    a non-square image is squashed, as the reference does) and clamped to [0, 1].
    """
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB")
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).unsqueeze(0) / 255.0  # (1, 3|4, H, W)
    if x.shape[1] == 4:
        x = x[:, :3] * x[:, 3:] + (1 - x[:, 3:])
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=True)
    return x.clamp(0, 1)
