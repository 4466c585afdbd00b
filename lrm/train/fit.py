"""Fit triplanes to a known shape under a model's own (fixed) decoder: a realistic field for benchmarks and tests.

A random-weight model's field is noise (dense everywhere or empty); planes optimised for a few hundred steps give a
solid object with a sharp surface, empty space around it and colours, like a trained model's output.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..renderer import density_activation
from .data import DataSpec, point_targets
from .shapes import Shape
from .trainer import OCCUPANCY_OFFSET


def fit_planes(model, shape: Shape, steps: int = 300, points: int = 8192, lr: float = 0.03, seed: int = 0,
               init: Tensor | None = None) -> Tensor:
    """Planes [1, 3, C, H, W] whose field under `model`'s decoder reproduces `shape` (occupancy at density 3.0,
    high density inside, near-zero density outside, shaded colours)."""
    cfg = model.config
    torch.manual_seed(seed)
    planes = init.clone() if init is not None else \
        0.1 * torch.randn(1, 3, cfg.triplane_dim, cfg.triplane_high_res, cfg.triplane_high_res)
    planes = planes.to(model.device, model.dtype).requires_grad_(True)
    optimizer = torch.optim.Adam([planes], lr=lr)
    spec = DataSpec(uniform_points=points // 2, surface_points=points // 2)
    rng = np.random.default_rng(seed)
    decoder_params = list(model.synthesizer.parameters())
    flags = [p.requires_grad for p in decoder_params]
    for p in decoder_params:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            for step in range(steps):
                target = point_targets(shape, spec, rng)
                raw, rgb = model.synthesizer(planes, target["xyz"][None].to(planes))
                raw, sdf = raw[0, :, 0], target["sdf"].to(raw)
                inside = (sdf < 0).to(raw)
                loss = F.binary_cross_entropy_with_logits(raw - OCCUPANCY_OFFSET, inside)
                deep = (sdf < -0.03).to(raw)
                loss = loss + (deep * F.relu(1 - density_activation(raw) / 40)).sum() / (deep.sum() + 1)
                outside = (sdf > 0.05).to(raw)  # empty space really empty: density < 5e-5
                loss = loss + (outside * F.relu(raw + 10)).sum() / (outside.sum() + 1)
                near = (sdf.abs() < 0.05).to(raw).unsqueeze(-1)
                loss = loss + (near * (rgb[0] - target["color"].to(rgb)) ** 2).sum() / (3 * near.sum() + 1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    finally:
        for p, flag in zip(decoder_params, flags):
            p.requires_grad_(flag)
    return planes.detach()
