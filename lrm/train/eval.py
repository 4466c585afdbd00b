"""`python -m lrm.train.eval MODEL`: quality on held-out procedural objects (seeds never trained on).

Metrics per object, with the training protocol's canonical input camera and world frame: volume IoU of the occupancy
(density > 3.0) on a 64³ grid, Chamfer distance between the predicted and true surfaces (mean of both directions, in
[-1, 1]-box units and in 64³ voxels), and PSNR of novel views rendered by the model against the true object.
Reported overall and per primitive type (single-primitive objects of each kind, plus random unions).

`--tolerance` prints how to read the IoU: the IoU that a uniform surface error of 0.5-3 voxels (the true object grown
or shrunk by that much) scores on the same objects, with no model involved.

`--errors` says where a model's 64³ occupancy errors lie relative to the input camera: outside the true silhouette,
in front of the true visible surface, behind the true back (along each input pixel's ray), or missed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

import lrm

from ..camera import look_at_origin, project, render_cameras, source_camera, sphere_positions
from ..field import ReferenceField, density_grid, grid_coordinates
from .data import HELD_OUT_SEED, DataSpec, input_image, make_shape
from .shapes import KINDS

GRID = 64
THRESHOLD = 3.0


def novel_cameras() -> torch.Tensor:
    """Four views the input never shows: side, back, other side, and from above-front."""
    views = ((90, 15), (180, 15), (270, 15), (30, 55))  # (azimuth, elevation) in degrees
    azimuth, elevation = zip(*[(math.radians(a), math.radians(e)) for a, e in views])
    return render_cameras(look_at_origin(sphere_positions(azimuth, elevation, 2.0)))


def _surface_points(volume: np.ndarray, level: float, n: int, rng: np.random.Generator) -> np.ndarray | None:
    import mcubes
    import trimesh
    v, f = mcubes.marching_cubes(volume, level)
    if len(f) == 0:
        return None
    mesh = trimesh.Trimesh(v / (volume.shape[0] - 1) * 2 - 1, f, process=False)
    return trimesh.sample.sample_surface(mesh, n, seed=int(rng.integers(2 ** 31)))[0]


def chamfer(a: np.ndarray | None, b: np.ndarray | None) -> float:
    from scipy.spatial import cKDTree
    if a is None or b is None:
        return float("nan")
    return 0.5 * (cKDTree(b).query(a)[0].mean() + cKDTree(a).query(b)[0].mean())


@torch.inference_mode()
def object_planes(model: lrm.LRM, shape, spec: DataSpec) -> torch.Tensor:
    """Planes [1, 3, C, H, W] from `shape`'s input view, as training shows it, on the model's device."""
    image = torch.from_numpy(input_image(shape, spec)).permute(2, 0, 1)[None].float() / 255
    return model.forward_planes(image.to(model.device), source_camera(2.0).to(model.device))


ERRORS = ("outside", "in_front", "behind", "between", "missed_front", "missed_back")
ERROR_PIXELS = 48  # the pixel grid (input view) on which silhouette and per-ray depths are binned: coarser than the
# 64³ voxels seen from the camera, so every pixel the object covers holds voxel centres


def ray_bins(points: torch.Tensor, camera: torch.Tensor, pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """For points [P, 3] and the conditioning camera [1, 16]: the flat index (row * pixels + column) of the pixel of a
    pixels² grid over the view that each point projects into (clamped to the frame), and its distance from the camera
    centre [P]."""
    uv = project(points[None], camera)[0][0].numpy()
    pix = np.clip((uv * pixels).astype(np.int64), 0, pixels - 1)
    c2w = camera[0, :12].reshape(3, 4).numpy()
    return pix[:, 1] * pixels + pix[:, 0], np.linalg.norm(points.numpy() - c2w[:, 3], axis=1)


def error_breakdown(pred: np.ndarray, true: np.ndarray, points: torch.Tensor, camera: torch.Tensor,
                    pixels: int = ERROR_PIXELS) -> dict[str, float]:
    """Where the occupancy pred [P] (bool) differs from true [P] at points [P, 3], as fractions of the true volume,
    for the conditioning camera [1, 16]: extra voxels outside the true silhouette ("outside"), in front of the first /
    behind the last true voxel of their pixel ("in_front" / "behind") or between them ("between", e.g. a hole seen
    edge-on); missed voxels in the nearer / farther half of the object's depth ("missed_front" / "missed_back").
    Silhouette and depths are binned on a pixels² grid. The extra parts add up to |pred - true| / |true|, the missed
    ones to |true - pred| / |true|."""
    pix, dist = ray_bins(points, camera, pixels)
    first, last = np.full(pixels * pixels, np.inf), np.full(pixels * pixels, -np.inf)
    np.minimum.at(first, pix[true], dist[true])
    np.maximum.at(last, pix[true], dist[true])
    extra, missed = pred & ~true, ~pred & true
    seen = np.isfinite(first[pix])
    middle = (dist[true].min() + dist[true].max()) / 2 if true.any() else 0.0
    volume = max(int(true.sum()), 1)
    before, after = dist < first[pix], dist > last[pix]
    counts = {"outside": extra & ~seen, "in_front": extra & seen & before, "behind": extra & seen & after,
              "between": extra & seen & ~before & ~after, "missed_front": missed & (dist < middle),
              "missed_back": missed & (dist >= middle)}
    return {k: float(v.sum() / volume) for k, v in counts.items()}


@torch.inference_mode()
def evaluate_object(model: lrm.LRM, seed: int, kind: str | None, spec: DataSpec, view_size: int = 64,
                    errors: bool = False) -> dict:
    """IoU, Chamfer and PSNR of one held-out object; errors=True adds its `error_breakdown` (keys `ERRORS`)."""
    shape = make_shape(seed, kind)
    planes = object_planes(model, shape, spec)
    pred = density_grid(model, planes, GRID).float().cpu().numpy()
    points = grid_coordinates(GRID, 0, GRID ** 3)
    true_sdf = shape.sdf(points).reshape(GRID, GRID, GRID).numpy()
    occ_pred, occ_true = pred > THRESHOLD, true_sdf < 0
    union = (occ_pred | occ_true).sum()
    rng = np.random.default_rng(seed)
    cd = chamfer(_surface_points(pred, THRESHOLD, 5000, rng), _surface_points(-true_sdf, 0.0, 5000, rng))
    row = {"seed": seed, "kind": kind or "union", "iou": float((occ_pred & occ_true).sum() / max(union, 1)),
           "chamfer": cd, "chamfer_voxels": cd / (2 / (GRID - 1)), "psnr": novel_view_psnr(model, planes, shape,
                                                                                              view_size)}
    if errors:
        row |= error_breakdown(occ_pred.reshape(-1), occ_true.reshape(-1), points, source_camera(2.0))
    return row


@torch.inference_mode()
def novel_view_psnr(model: lrm.LRM, planes: torch.Tensor, shape, view_size: int = 64) -> float:
    """Mean PSNR (dB) of the model's renders of `novel_cameras()` against the true object on white."""
    cams = novel_cameras()
    # the reference renderer: an exact metric, independent of the fast path
    rendered = ReferenceField(model, planes).render(cams, view_size)["rgb"].float().cpu().clamp(0, 1)
    truth, _ = shape.render(cams, view_size)
    mse = ((rendered - truth) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


def held_out_objects(per_kind: int, unions: int) -> list[tuple[int, str | None]]:
    """(seed, kind) of the evaluation objects: `per_kind` single primitives of each kind, then `unions` random
    unions (kind None)."""
    jobs = [(HELD_OUT_SEED + 1000 * k + i, kind) for k, kind in enumerate(KINDS) for i in range(per_kind)]
    return jobs + [(HELD_OUT_SEED + 100_000 + i, None) for i in range(unions)]


def summarize(rows: list[dict], metrics: tuple[str, ...]) -> dict:
    """Means of `metrics` over all rows and per kind ("union" for the multi-primitive objects)."""
    summary = {}
    for group in ["all", *KINDS, "union"]:
        sel = [r for r in rows if group == "all" or r["kind"] == group]
        if sel:
            summary[group] = {m: float(np.nanmean([r[m] for r in sel])) for m in metrics} | {"n": len(sel)}
    return summary


def evaluate(model: lrm.LRM, per_kind: int = 4, unions: int = 12, spec: DataSpec | None = None,
             errors: bool = False) -> dict:
    """Held-out objects: `per_kind` single primitives of each kind and `unions` random unions; errors=True adds
    where the occupancy errors lie (`error_breakdown`)."""
    spec = spec or DataSpec(image_size=model.infer_defaults.source_size)
    rows = [evaluate_object(model, seed, kind, spec, errors=errors)
            for seed, kind in held_out_objects(per_kind, unions)]
    metrics = ("iou", "chamfer", "chamfer_voxels", "psnr") + (ERRORS if errors else ())
    return {"summary": summarize(rows, metrics), "objects": rows}


TOLERANCES = (0.5, 1.0, 2.0, 3.0)  # uniform surface errors, in 64³ voxels


def tolerance_iou(sdf: torch.Tensor, voxels: float) -> tuple[float, float]:
    """IoU of the occupancy sdf < 0 against the same object grown and shrunk by `voxels` 64³ voxels -> (grown,
    shrunk): what a prediction whose surface is off by that much everywhere scores."""
    true, offset = sdf < 0, voxels * 2 / (GRID - 1)
    grown, shrunk = sdf < offset, sdf < -offset
    return float(true.sum() / grown.sum()), float(shrunk.sum() / true.sum())


@torch.inference_mode()
def tolerance_table(per_kind: int = 4, unions: int = 12) -> dict:
    """`tolerance_iou` on the held-out objects, per kind: the scale on which to read a model's IoU."""
    points = grid_coordinates(GRID, 0, GRID ** 3)
    rows = []
    for seed, kind in held_out_objects(per_kind, unions):
        sdf = make_shape(seed, kind).sdf(points)
        row = {"seed": seed, "kind": kind or "union"}
        for v in TOLERANCES:
            row[f"grown {v:g}"], row[f"shrunk {v:g}"] = tolerance_iou(sdf, v)
        rows.append(row)
    metrics = tuple(f"{side} {v:g}" for v in TOLERANCES for side in ("grown", "shrunk"))
    return {"summary": summarize(rows, metrics), "objects": rows}


def format_tolerance(summary: dict) -> str:
    lines = ["IoU @ 64³ of the true objects against themselves grown / shrunk by a uniform surface error (voxels):",
             f"{'objects':<12} {'n':>3} " + " ".join(f"{f'±{v:g}':>11}" for v in TOLERANCES)]
    for group, m in summary.items():
        cells = " ".join(f"{m[f'grown {v:g}']:>5.3f}/{m[f'shrunk {v:g}']:<5.3f}" for v in TOLERANCES)
        lines.append(f"{group:<12} {m['n']:>3} {cells}")
    return "\n".join(lines)


def format_errors(summary: dict) -> str:
    lines = ["Occupancy errors at 64³ as fractions of the true volume: extra voxels outside the input's silhouette, "
             "in front of the visible surface, behind the back, in between (e.g. a hole); missed voxels in the "
             "nearer / farther half:",
             f"{'objects':<12} {'n':>3} {'outside':>8} {'in front':>9} {'behind':>7} {'between':>8} "
             f"{'missed near/far':>16}"]
    for group, m in summary.items():
        lines.append(f"{group:<12} {m['n']:>3} {m['outside']:>8.3f} {m['in_front']:>9.3f} {m['behind']:>7.3f} "
                     f"{m['between']:>8.3f} {m['missed_front']:>8.3f}/{m['missed_back']:<.3f}")
    return "\n".join(lines)


def format_table(summary: dict) -> str:
    lines = [f"{'objects':<12} {'n':>3} {'IoU@64':>7} {'Chamfer':>8} {'(voxels)':>9} {'PSNR dB':>8}"]
    for group, m in summary.items():
        lines.append(f"{group:<12} {m['n']:>3} {m['iou']:>7.3f} {m['chamfer']:>8.4f} {m['chamfer_voxels']:>9.2f} "
                     f"{m['psnr']:>8.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lrm.train.eval", description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", help="checkpoints (folders / files / repo ids) to evaluate")
    p.add_argument("--per-kind", type=int, default=4, help="held-out single-primitive objects per kind")
    p.add_argument("--unions", type=int, default=12, help="held-out multi-primitive objects")
    p.add_argument("--json", default=None, help="write all results to this JSON file")
    p.add_argument("--device", default="cpu", help='"cpu" or "cuda"')
    p.add_argument("--tolerance", action="store_true",
                   help="also print the IoU that a uniform surface error of 0.5-3 voxels scores on the same objects")
    p.add_argument("--errors", action="store_true",
                   help="also print where each model's occupancy errors lie (silhouette, in front, behind, missed)")
    args = p.parse_args(argv)
    if not args.models and not args.tolerance:
        p.error("give at least one model to evaluate (or --tolerance)")
    results, tolerance = {}, None
    if args.tolerance:
        tolerance = tolerance_table(args.per_kind, args.unions)
        print(format_tolerance(tolerance["summary"]))
    for source in args.models:
        model = lrm.load_model(source, args.device)
        results[source] = evaluate(model, args.per_kind, args.unions, errors=args.errors) | training_progress(source)
        print(f"\n{source}\n{format_table(results[source]['summary'])}")
        if args.errors:
            print(format_errors(results[source]["summary"]))
    if len(results) > 1:  # several checkpoints, e.g. runs/demo/checkpoints/*: the curve against training time
        print(f"\n{'checkpoint':<40} {'step':>6} {'minutes':>8} {'IoU@64':>7} {'PSNR dB':>8}")
        for source, r in results.items():
            print(f"{source:<40} {r.get('step', -1):>6} {r.get('minutes', float('nan')):>8.1f} "
                  f"{r['summary']['all']['iou']:>7.3f} {r['summary']['all']['psnr']:>8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results | ({"tolerance": tolerance} if tolerance else {}), indent=1))
    return 0


def training_progress(source: str) -> dict:
    """Step and training minutes of a checkpoint written by `python -m lrm.train` (empty for other models)."""
    state = Path(source) / "trainer_state.pt"
    if not state.is_file():
        return {}
    state = torch.load(state, map_location="cpu", weights_only=True)
    return {"step": int(state["step"]), "minutes": round(float(state["elapsed"]) / 60, 2)}


if __name__ == "__main__":
    sys.exit(main())
