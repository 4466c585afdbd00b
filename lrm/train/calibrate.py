"""`python -m lrm.train.calibrate RUN --out DIR`: sharpen a trained model's density around its surface.

A model trained from scratch on a CPU budget stays unsure of exact depth and hedges with semi-transparent density
(raw values just above the boundary, 3.95, inside the object): its meshes are right but its videos are foggy. The
calibration rescales the raw density about the boundary, raw' = 3.95 + k (raw - 3.95), which leaves the density-3.0
surface (the mesh, the IoU) exactly where it is and makes the inside opaque. It is stored in config.json as
`density_scale` / `density_shift` (extensions whose defaults leave released checkpoints unchanged). k is chosen from
a few candidates by novel-view PSNR on *training* objects (held-out seeds stay untouched for evaluation).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import numpy as np
import torch

import lrm

from .eval import novel_view_psnr, object_planes
from ..checkpoint import model_from_checkpoint, read_checkpoint, save_pretrained
from .data import DataSpec, make_shape
from .trainer import OCCUPANCY_OFFSET

CANDIDATES = (1.0, 2.0, 4.0, 8.0, 16.0)


def sharpened(scale: float, shift: float, k: float) -> tuple[float, float]:
    """(scale, shift) of raw' = 3.95 + k (raw - 3.95) for raw = scale * output + shift."""
    return scale * k, shift * k + OCCUPANCY_OFFSET * (1 - k)


def sharpen(config: lrm.LRMConfig, k: float) -> lrm.LRMConfig:
    """The config whose raw density is 3.95 + k (raw - 3.95) of `config`'s."""
    scale, shift = sharpened(config.density_scale, config.density_shift, k)
    return dataclasses.replace(config, density_scale=scale, density_shift=shift)


@torch.inference_mode()
def choose_sharpness(model: lrm.LRM, seeds: list[int], candidates=CANDIDATES, view_size: int = 64) -> dict[float, float]:
    """Mean novel-view PSNR on the objects `seeds` for each candidate k."""
    spec = DataSpec(image_size=model.infer_defaults.source_size)
    decoder = model.synthesizer.decoder
    base = decoder.density_scale, decoder.density_shift
    cases = []
    for seed in seeds:
        shape = make_shape(seed)
        cases.append((shape, object_planes(model, shape, spec)))
    scores = {}
    try:
        for k in candidates:
            decoder.density_scale, decoder.density_shift = sharpened(*base, k)
            scores[k] = float(np.mean([novel_view_psnr(model, planes, shape, view_size) for shape, planes in cases]))
    finally:
        decoder.density_scale, decoder.density_shift = base
    return scores


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lrm.train.calibrate", description=__doc__.splitlines()[0])
    p.add_argument("run", help="a checkpoint folder written by python -m lrm.train")
    p.add_argument("--out", required=True, help="folder for the calibrated checkpoint (config.json + weights)")
    p.add_argument("--objects", type=int, default=24, help="training objects (seeds 0..N-1) to choose k on")
    p.add_argument("--device", default="cpu", help='"cpu" or "cuda"')
    args = p.parse_args(argv)
    model = lrm.load_model(args.run, args.device)
    scores = choose_sharpness(model, list(range(args.objects)))
    for k, psnr in scores.items():
        print(f"k = {k:>5g}: novel-view PSNR {psnr:.2f} dB on {args.objects} training objects")
    best = max(scores, key=scores.get)
    ckpt = read_checkpoint(args.run)
    calibrated = model_from_checkpoint(dataclasses.replace(ckpt, config=sharpen(ckpt.config, best)))
    out = save_pretrained(calibrated, args.out, infer=ckpt.infer)
    print(f"k = {best:g} written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
