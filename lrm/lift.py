"""Image features lifted onto the triplane tokens (an extension of this project, `config.triplane_lift`).

Points of each plane token are projected into the input image with the conditioning camera and the encoder's patch
features there are averaged. The frontal (x, z) plane, whose missing axis y is the canonical camera's depth, is
sampled at y = 0 only (averaging along the depth would smear it radially: perspective); the (x, y) and (z, y) planes,
whose missing axes lie across the view, average points spread along them, i.e. they pool image columns / rows.
A fixed geometric prior: it tells a small model trained from scratch where the image is, so it learns fast.

`config.triplane_lift_rgb` lifts the input image's own colours the same way, per texel of the output planes, through
a learned linear map into the plane channels: a small model trained briefly otherwise keeps its colours grey.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .camera import project

# Plane axes of the triplane field (lrm/renderer.py): plane 0 samples (x, y), 1 (x, z), 2 (z, y) as (u = width,
# v = height); the third entry is the missing axis.
PLANE_AXES = ((0, 1, 2), (0, 2, 1), (2, 1, 0))
FRONTAL_DEPTH_AXIS = 1  # y: the viewing direction of OpenLRM's canonical input camera


def token_points(low_res: int, depth_samples: int, device=None) -> Tensor:
    """World points [3, h*w, K, 3] for the h x w tokens of each plane, K samples along the missing axis (all at 0
    for the frontal plane)."""
    centers = (torch.arange(low_res, dtype=torch.float32, device=device) * 2 + 1) / low_res - 1  # texel centres
    depth = (torch.arange(depth_samples, dtype=torch.float32, device=device) * 2 + 1) / depth_samples - 1
    v, u, d = torch.meshgrid(centers, centers, depth, indexing="ij")  # token (row i, col j), depth k
    planes = []
    for a_u, a_v, a_d in PLANE_AXES:
        p = torch.zeros(low_res, low_res, depth_samples, 3, device=device)
        p[..., a_u], p[..., a_v] = u, v
        p[..., a_d] = 0 if a_d == FRONTAL_DEPTH_AXIS else d
        planes.append(p.reshape(low_res * low_res, depth_samples, 3))
    return torch.stack(planes)


def lift_image(fmap: Tensor, camera: Tensor, res: int, depth_samples: int) -> Tensor:
    """A map [N, C, h, w] over the input image, sampled at the projections of each texel's points of an res x res
    triplane and averaged along the missing axis -> [N, 3*res*res, C] (zero outside the image)."""
    n = fmap.shape[0]
    points = token_points(res, depth_samples, fmap.device).to(fmap.dtype)
    uv, _ = project(points.expand(n, *points.shape), camera)  # [N, 3, r*r, K, 2]
    grid = (uv * 2 - 1).reshape(n, -1, depth_samples, 2)  # [N, 3*r*r, K, 2]
    sampled = F.grid_sample(fmap, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return sampled.mean(-1).transpose(1, 2)  # [N, 3*r*r, C]


class TriplaneLift(nn.Module):
    """Patch features [N, 1 + h*w, C] + camera [N, 16] -> additions to the triplane tokens [N, 3*r*r, D]."""

    def __init__(self, feat_dim: int, dim: int, low_res: int, depth_samples: int = 8):
        super().__init__()
        self.low_res, self.depth_samples = low_res, depth_samples
        self.proj = nn.Linear(feat_dim, dim)

    def forward(self, feats: Tensor, camera: Tensor) -> Tensor:
        n, length, c = feats.shape
        side = int(round((length - 1) ** 0.5))
        fmap = feats[:, 1:].transpose(1, 2).reshape(n, c, side, side)  # [N, C, h, w], CLS dropped
        return self.proj(lift_image(fmap, camera, self.low_res, self.depth_samples))


class ColorLift(nn.Module):
    """Input image [N, 3, H, W] + camera [N, 16] -> additions to the planes [N, 3, C, H, W] (H = W = the high res)."""

    def __init__(self, triplane_dim: int, high_res: int, depth_samples: int = 8):
        super().__init__()
        self.high_res, self.depth_samples = high_res, depth_samples
        self.proj = nn.Linear(3, triplane_dim)

    def forward(self, image: Tensor, camera: Tensor) -> Tensor:
        n, r = image.shape[0], self.high_res
        pooled = lift_image(image - 1, camera, r, self.depth_samples) + 1  # outside the image: white background
        return self.proj(pooled).view(n, 3, r, r, -1).permute(0, 1, 4, 2, 3)  # [N, 3, C, r, r]
