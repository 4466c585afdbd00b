"""`python -m lrm.train.probe`: how much depth do the input pictures show? A dense depth probe with no LRM in it.

A small convolutional encoder-decoder learns, from the training protocol's input views, what
`lrm.train.eval --errors` says an LRM gets wrong: for each pixel of the input view, whether its ray hits the object and
where it first enters and last leaves it (`depth_layers`). Its 3D guess fills every 64³ voxel between the predicted
entry and exit of its pixel's ray (`fill`), scored like `lrm.train.eval` (IoU at 64³) on the same held-out objects.
The exact layers fill to an IoU of ~0.95, so the probe's IoU says what a network trained for minutes reads from the
pictures, whatever the LRM.
`--input normals` gives it each object's normal map instead (an oracle: no camera takes those).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..camera import get_rays, source_camera
from .eval import GRID, held_out_objects, ray_bins, summarize
from ..field import grid_coordinates
from ..renderer import ray_box_limits
from .data import (DataSpec, build_image_cache, cache_is_current, input_image, make_shape, parallel_map,
                   placed_shape)
from .shapes import Shape, source_view_camera

LAYER_SIZE = 64  # pixels per side of the depth layers (the probe's output)
INPUTS = ("views", "normals")


def _source_rays(size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The canonical input view's pixel rays: origins, dirs [R, 3] and where they enter / leave the [-1, 1]^3 box
    [R] (entry clamped at the camera)."""
    _, camera = source_view_camera(2.0)
    origins, dirs = get_rays(camera[None], size)
    near, far = ray_box_limits(origins[0], dirs[0])
    return origins[0], dirs[0], near[:, 0].clamp_min(0), far[:, 0]


def depth_layers(shape: Shape, size: int = LAYER_SIZE) -> Tensor:
    """The canonical input view's depth layers [3, size, size]: hit (0 / 1), and the distance from the camera where
    each pixel's ray first enters and last leaves the object, minus 2 (the origin's distance; 0 where missed)."""
    origins, dirs, near, far = _source_rays(size)
    entry, hit = shape.march(origins, dirs, near, far, steps=96)
    back, _ = shape.march(origins + far[:, None] * dirs, -dirs, torch.zeros_like(far), far - near, steps=96)
    exit_ = torch.maximum(far - back, entry)  # a ray that only grazes the object may miss it on the way back
    zero = torch.zeros_like(entry)
    layers = torch.stack([hit.float(), torch.where(hit, entry - 2, zero), torch.where(hit, exit_ - 2, zero)])
    return layers.view(3, size, size)


def normal_view(shape: Shape, size: int) -> np.ndarray:
    """The canonical view's normal map as uint8 RGB [H, W, 3] over white: camera right, up and towards the camera
    (world x, z, -y) mapped from [-1, 1] to [0, 1]."""
    origins, dirs, near, far = _source_rays(size)
    t, hit = shape.march(origins, dirs, near, far, steps=96)
    rgb = torch.ones(size * size, 3)
    if hit.any():
        n = shape.normal(origins[hit] + t[hit, None] * dirs[hit])
        rgb[hit] = torch.stack([n[:, 0], n[:, 2], -n[:, 1]], -1) * 0.5 + 0.5
    return (rgb.view(size, size, 3).numpy() * 255).round().astype(np.uint8)


def probe_input(shape: Shape, inputs: str, spec: DataSpec) -> np.ndarray:
    """What the probe sees of `shape`: its input view (`inputs` "views") or its normal map ("normals")."""
    return input_image(shape, spec) if inputs == "views" else normal_view(shape, spec.image_size)


def fill(layers: np.ndarray, points: Tensor, camera: Tensor) -> np.ndarray:
    """Occupancy [P] (bool) of points [P, 3]: inside where their pixel's ray (conditioning camera [1, 16]) hits
    (layers[0] > 0.5) and they lie between its entry and exit (layers[1], layers[2], distances minus 2)."""
    pix, dist = ray_bins(points, camera, layers.shape[-1])
    hit, entry, exit_ = (layer.reshape(-1)[pix] for layer in layers)
    return (hit > 0.5) & (dist - 2 >= entry) & (dist - 2 <= exit_)


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, 1, 1), nn.GroupNorm(8, cout), nn.ReLU(inplace=True))


class DepthProbe(nn.Module):
    """Image [N, 3, H, W] in [0, 1] -> depth layers [N, 3, H/2, W/2] (hit logit, entry, exit): four stride-2
    convolution levels (plus two pixel-coordinate channels and a global-pool term at the bottom), then back up to
    half the input size with skip connections."""

    def __init__(self, image_size: int = 128, channels: tuple[int, ...] = (32, 64, 96, 128)):
        super().__init__()
        c = channels
        self.down = nn.ModuleList([_block(5, c[0], 2)] + [_block(c[i], c[i + 1], 2) for i in range(len(c) - 1)])
        self.glob = nn.Linear(c[-1], c[-1])
        self.up = nn.ModuleList([_block(c[i + 1] + c[i], c[i]) for i in reversed(range(len(c) - 1))])
        self.head = nn.Conv2d(c[0], 3, 1)
        ramp = torch.linspace(-1, 1, image_size)
        self.register_buffer("coords", torch.stack(torch.meshgrid(ramp, ramp, indexing="xy"))[None], persistent=False)

    def forward(self, image: Tensor) -> Tensor:
        x = torch.cat([image, self.coords.expand(len(image), -1, -1, -1)], 1)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        x = x + self.glob(x.mean((2, 3)))[:, :, None, None]
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = block(torch.cat([F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False), skip], 1))
        return self.head(x)


def probe_loss(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """(BCE of the hit, L1 of entry and exit where the true ray hits, in box units)."""
    hit = target[:, 0]
    bce = F.binary_cross_entropy_with_logits(pred[:, 0], hit)
    l1 = ((pred[:, 1:] - target[:, 1:]).abs() * hit[:, None]).sum() / (2 * hit.sum()).clamp_min(1)
    return bce, l1


def _layers_worker(args) -> np.ndarray:
    seed, place, size = args
    return depth_layers(placed_shape(seed, place), size).numpy()


def _normals_worker(args) -> np.ndarray:
    seed, place, size = args
    return normal_view(placed_shape(seed, place), size)


def _cached(path: Path, worker, jobs: list, workers: int, desc: str) -> np.ndarray:
    if path.exists():
        array = np.load(path, mmap_mode="r")
        if cache_is_current((array,), lambda job: (worker(job),), jobs):
            return np.asarray(array)
    array = np.stack(parallel_map(worker, jobs, workers, desc, chunksize=16))
    np.save(path, array)
    return array


@torch.inference_mode()
def evaluate_probe(model: DepthProbe, inputs: str = "views", per_kind: int = 6, unions: int = 20,
                   spec: DataSpec | None = None) -> dict:
    """IoU @ 64³ of the probe's filled rays and its depth L1 on `lrm.train.eval`'s held-out objects."""
    spec = spec or DataSpec()
    points, camera = grid_coordinates(GRID, 0, GRID ** 3), source_camera(2.0)
    model.eval()
    rows = []
    for seed, prim in held_out_objects(per_kind, unions):
        shape = make_shape(seed, prim)
        image = torch.from_numpy(probe_input(shape, inputs, spec)).permute(2, 0, 1)[None].float() / 255
        pred = model(image)
        target = depth_layers(shape, pred.shape[-1])[None]
        layers = torch.cat([pred[:, :1].sigmoid(), pred[:, 1:]], 1)[0].numpy()
        occ, true = fill(layers, points, camera), (shape.sdf(points) < 0).numpy()
        iou = float((occ & true).sum() / max((occ | true).sum(), 1))
        rows.append({"seed": seed, "kind": prim or "union", "iou": iou, "depth_l1": float(probe_loss(pred, target)[1])})
    return {"summary": summarize(rows, ("iou", "depth_l1")), "objects": rows}


def train_probe(out: Path, inputs: str = "views", objects: int = 4000, steps: int = 2400, batch: int = 16,
                lr: float = 2e-3, seed: int = 0, workers: int = 2) -> DepthProbe:
    """Trains a `DepthProbe` for `steps` steps (AdamW, 100 warm-up steps, cosine) on what `inputs` (one of `INPUTS`)
    shows of the training objects (seeds 0 .. objects - 1, the LRM's input-view cache); arrays are cached in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = DataSpec()
    seeds = list(range(objects))
    views, places = build_image_cache(seeds, spec, out / f"views-{objects}-{spec.image_size}.npy", workers)
    if inputs == "normals":
        views = _cached(out / f"normals-{objects}-{spec.image_size}.npy", _normals_worker,
                        [(s, places[s], spec.image_size) for s in seeds], workers, "normal maps")
    targets = torch.from_numpy(_cached(out / f"layers-{objects}-{LAYER_SIZE}.npy", _layers_worker,
                                       [(s, places[s], LAYER_SIZE) for s in seeds], workers, "depth layers"))
    torch.manual_seed(seed)
    model = DepthProbe(spec.image_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    rng = np.random.default_rng(seed)
    from tqdm.auto import tqdm
    bar = tqdm(range(steps), desc=f"probe ({inputs})", dynamic_ncols=True)
    log = open(out / f"probe_log-{inputs}.jsonl", "w")
    started = time.perf_counter()
    for step in bar:
        pick = np.sort(rng.choice(objects, batch, replace=False))
        image = torch.from_numpy(np.asarray(views[pick])).permute(0, 3, 1, 2).float() / 255
        bce, l1 = probe_loss(model(image), targets[pick])
        optimizer.zero_grad(set_to_none=True)
        (bce + 4 * l1).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if (step + 1) % 50 == 0:
            row = {"step": step + 1, "minutes": round((time.perf_counter() - started) / 60, 3),
                   "bce": round(bce.item(), 5), "l1": round(l1.item(), 5)}
            log.write(json.dumps(row) + "\n")
            bar.set_postfix(bce=f"{row['bce']:.3f}", l1=f"{row['l1']:.4f}")
    log.close()
    torch.save(model.state_dict(), out / f"probe-{inputs}.pt")
    return model


def format_probe(summary: dict) -> str:
    lines = [f"{'objects':<12} {'n':>3} {'IoU@64':>7} {'depth L1':>9}"]
    lines += [f"{g:<12} {m['n']:>3} {m['iou']:>7.3f} {m['depth_l1']:>9.4f}" for g, m in summary.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lrm.train.probe", description=__doc__.splitlines()[0])
    p.add_argument("--input", choices=INPUTS, default="views", help="what the probe sees of each object")
    p.add_argument("--out", default="runs/probe", help="folder for the cached arrays, the log and the probe")
    p.add_argument("--objects", type=int, default=4000, help="training objects (seeds 0..N-1)")
    p.add_argument("--steps", type=int, default=2400, help="optimizer steps (~14 min on 2 cores at batch 16)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--per-kind", type=int, default=6, help="held-out single-primitive objects per kind")
    p.add_argument("--unions", type=int, default=20, help="held-out multi-primitive objects")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    args = p.parse_args(argv)
    model = train_probe(Path(args.out), args.input, args.objects, args.steps, args.batch)
    result = evaluate_probe(model, args.input, args.per_kind, args.unions)
    print(format_probe(result["summary"]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
