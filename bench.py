"""Benchmark: the whole job (planes + mesh + orbit video) in the fast and the reference mode, in the same run.

    python bench.py [--quick] [--arch small,base] [--device cpu|cuda] [--json PATH]

Models are the real OpenLRM v1.1 small / base architectures with random weights. A random field is noise (dense
everywhere or empty), which makes empty-space skipping look worse or better than it is, so the planes rendered and
meshed are fitted to a procedural object under the model's own decoder (lrm/train/fit.py): a solid object with
empty space around it, like a trained model's output. The planes stage times the real forward pass.

Each (architecture, mode) runs in its own process so that its peak RSS is its own. The reference video is rendered
for a few evenly spaced frames and its time extrapolated to the full orbit (it takes minutes per frame set on a CPU);
the quality of the fast path (PSNR of those frames, Chamfer distance of the meshes) is measured against them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ARCHS = {
    # OpenLRM v1.1 configs (zxhezexin/openlrm-obj-small-1.1 and -base-1.1)
    "small": dict(camera_embed_dim=1024, rendering_samples_per_ray=96, transformer_dim=512, transformer_layers=12,
                  transformer_heads=8, triplane_low_res=32, triplane_high_res=64, triplane_dim=32,
                  encoder_type="dinov2", encoder_model_name="dinov2_vits14_reg", encoder_feat_dim=384,
                  encoder_freeze=False),
    "base": dict(camera_embed_dim=1024, rendering_samples_per_ray=96, transformer_dim=768, transformer_layers=12,
                 transformer_heads=12, triplane_low_res=32, triplane_high_res=64, triplane_dim=48,
                 encoder_type="dinov2", encoder_model_name="dinov2_vitb14_reg", encoder_feat_dim=768,
                 encoder_freeze=False),
}
EXAMPLE = Path(__file__).parent / "examples" / "three_parts.png"
SHAPE_SEED = 2002  # the same object as that example


def build_model(arch: str, device: str):
    from lrm import LRM, LRMConfig
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LRM(LRMConfig.from_dict(ARCHS[arch]))
    model = model.to_empty(device=device)
    with torch.no_grad():  # random weights, scaled like a trained ViT's (N(0, 0.02)); LayerNorms at 1 / 0
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 0.02)
            elif "norm" in name and name.endswith("weight") or name.endswith("gamma"):
                p.fill_(1.0)
            else:
                p.zero_()
        # The triplane decoder gets He-initialised weights instead: with N(0, 0.02) its 4 layers shrink any input by
        # ~1e-3, so no plane values reach the densities (~10 inside, ~-8 outside) of a trained model's field.
        for m in model.synthesizer.modules():
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model.eval().requires_grad_(False)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_mode(arch: str, mode: str, device: str, planes_path: str, out_path: str, views: int, ref_frames: list[int],
             mesh_res: int, precision: str = "fp32") -> None:
    """One (architecture, mode) in a fresh process: time each stage, save frames / mesh, report peak memory."""
    torch.set_grad_enabled(False)
    from PIL import Image

    import lrm
    from lrm.asset import make_asset
    from lrm.pipeline import FIELDS
    from lrm.video import video_cameras, video_writer
    model = build_model(arch, device)
    size = model.infer_defaults.video_size
    image = lrm.image_to_tensor(lrm.preprocess(Image.open(EXAMPLE)), model.infer_defaults.source_size).to(device)
    timings = {}
    precision = precision if mode == "fast" else "fp32"
    for _ in range(2 if device == "cuda" else 1):  # on a GPU, the first pass warms up kernels
        sync(device)
        t = time.perf_counter()
        forward = model.forward_planes(image, lrm.source_camera().to(device), precision=precision)
        sync(device)
        timings["planes"] = time.perf_counter() - t
    planes_error = 0.0
    if precision != "fp32":  # how far autocast moves the planes (relative L2 against fp32)
        exact = model.forward_planes(image, lrm.source_camera().to(device))
        planes_error = float((forward.float() - exact).norm() / exact.norm())
    planes = torch.load(planes_path, weights_only=True).to(device)  # the fitted, realistic field
    sync(device)
    t = time.perf_counter()
    field = FIELDS[mode](model, planes)
    mesh = lrm.extract_mesh(field, mesh_res, 3.0)
    lrm.export_mesh(mesh, Path(out_path).with_suffix(".ply"))  # the job writes the dense mesh in this stage
    sync(device)
    timings["mesh"] = time.perf_counter() - t
    # the asset stage at its defaults (floaters, 40k faces, 1024² texture) and its GLB, as the job writes it
    t = time.perf_counter()
    asset = make_asset(field, mesh)
    glb = Path(out_path).with_suffix(".glb")
    lrm.export_mesh(asset, glb)
    timings["asset"] = time.perf_counter() - t
    # its quality is reported for the fast mode only (bench_arch), so only measured there
    quality = asset_quality(field, mesh, asset, mesh_res) | {"glb_mb": glb.stat().st_size / 1e6} if mode == "fast" \
        else {}
    cameras = video_cameras(views).to(device)
    frames = ref_frames if mode == "reference" else list(range(views))
    sync(device)
    t = time.perf_counter()
    rgb = []
    writer = video_writer(Path(out_path).with_suffix(".mp4"), 25)  # the H.264 encoding is part of the stage
    for start in range(0, len(frames), 4):
        idx = frames[start:start + 4]
        rgb.append(field.render(cameras[idx], size)["rgb"])
        for frame in lrm.video.to_uint8(rgb[-1]):
            writer.append_data(frame)
    writer.close()
    sync(device)
    video_s = time.perf_counter() - t
    timings["video"] = video_s * views / len(frames)
    rgb = torch.cat(rgb)[[frames.index(f) for f in ref_frames]].float().cpu().numpy()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # kB -> GB
    gpu_peak = torch.cuda.max_memory_allocated() / 1024 ** 3 if device == "cuda" else None
    np.savez(out_path, frames=rgb, vertices=np.asarray(mesh.vertices, np.float32), faces=np.asarray(mesh.faces),
             timings=json.dumps(timings), peak_rss_gb=peak, gpu_peak_gb=-1 if gpu_peak is None else gpu_peak,
             video_frames_timed=len(frames), planes_error=planes_error, asset=json.dumps(quality))


def asset_quality(field, dense, asset, resolution: int) -> dict:
    """Triangles of the asset, its texture against the field's exact colours at surface points (PSNR, dB) and its
    surface against the dense mesh (Chamfer, voxels of the marching-cubes grid)."""
    import trimesh

    from lrm.asset import texture_colors
    points, faces = trimesh.sample.sample_surface(asset, 20000, seed=0)
    baked = texture_colors(asset, points, faces)
    exact = field.colors(torch.as_tensor(points, dtype=torch.float32)).float().cpu().numpy()
    return {"triangles": len(asset.faces), "texture_psnr_db": psnr(baked, exact),
            "chamfer_voxels": chamfer_voxels((np.asarray(asset.vertices), np.asarray(asset.faces)),
                                             (np.asarray(dense.vertices), np.asarray(dense.faces)), resolution)}


def chamfer_voxels(a: np.ndarray, b: np.ndarray, resolution: int) -> float:
    import trimesh
    from scipy.spatial import cKDTree
    if len(a[1]) == 0 or len(b[1]) == 0:  # an empty mesh has no surface to compare
        return 0.0 if len(a[1]) == len(b[1]) else float("inf")
    # 20k query points against 500k target points per surface: the targets' spacing (~0.5 voxel at 256³) keeps the
    # sampling's own contribution to ~0.2 voxels (with 20k targets it is ~1 voxel, whatever the meshes)
    ma, mb = trimesh.Trimesh(*a, process=False), trimesh.Trimesh(*b, process=False)
    qa, qb = (trimesh.sample.sample_surface(m, 20000, seed=s)[0] for m, s in ((ma, 0), (mb, 1)))
    ta, tb = (trimesh.sample.sample_surface(m, 500000, seed=s)[0] for m, s in ((ma, 2), (mb, 3)))
    d = 0.5 * (cKDTree(tb).query(qa)[0].mean() + cKDTree(ta).query(qb)[0].mean())
    return float(d / (2 / (resolution - 1)))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / max(np.mean((a - b) ** 2), 1e-12)))


def bench_warm(arch: str, args, workdir: Path, repeats: int = 5) -> dict:
    """Requests as the app runs them, the model loaded once: planes (the forward pass), then on the fitted planes the
    fast field + mesh + PLY, the asset + GLB, the video + its encoding; seconds per stage, the median of `repeats`
    after one warm-up request."""
    import lrm
    from lrm.asset import make_asset
    from lrm.train.data import make_shape
    from lrm.train.fit import fit_planes
    torch.set_grad_enabled(False)
    model = build_model(arch, args.device)
    planes = fit_planes(model, make_shape(SHAPE_SEED), steps=args.fit_steps, points=8192)
    image = lrm.image_to_tensor(lrm.preprocess(EXAMPLE), model.infer_defaults.source_size).to(args.device)
    runs = []
    for i in range(repeats + 1):
        times = {}

        def stage(name, start):
            sync(args.device)
            times[name] = time.perf_counter() - start
            return time.perf_counter()
        t = time.perf_counter()
        model.forward_planes(image, lrm.source_camera().to(args.device), precision=args.precision)
        t = stage("planes", t)
        field = lrm.FastField(model, planes)
        mesh = lrm.extract_mesh(field, args.mesh)
        lrm.export_mesh(mesh, workdir / f"{arch}.ply")
        t = stage("mesh", t)
        lrm.export_mesh(make_asset(field, mesh), workdir / f"{arch}.glb")
        t = stage("asset", t)
        lrm.render_video(field, workdir / f"{arch}.mp4", args.views)
        stage("video", t)
        if i:  # the first request warms up (kernels, caches)
            runs.append(times)
    result = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    result["request_to_glb"] = result["planes"] + result["mesh"] + result["asset"]
    print(f"[{arch}] warm request on {args.device} (median of {repeats}): " + "  ".join(
        f"{k} {v:.3f} s" for k, v in result.items()), flush=True)
    return result


def bench_arch(arch: str, args, workdir: Path) -> dict:
    from lrm.train.data import make_shape
    from lrm.train.fit import fit_planes
    torch.set_grad_enabled(False)
    planes_path = workdir / f"{arch}-planes.pt"
    model = build_model(arch, "cpu")
    t = time.perf_counter()
    planes = fit_planes(model, make_shape(SHAPE_SEED), steps=args.fit_steps, points=8192)
    print(f"[{arch}] fitted planes to a procedural object in {time.perf_counter() - t:.0f} s", flush=True)
    torch.save(planes, planes_path)
    render_size = model.infer_defaults.video_size
    del model
    ref_frames = np.linspace(0, args.views - 1, args.ref_frames).round().astype(int).tolist()
    results = {}
    ctx = mp.get_context("spawn")
    for mode in ("fast", "reference"):
        out = workdir / f"{arch}-{mode}.npz"
        proc = ctx.Process(target=run_mode, args=(arch, mode, args.device, str(planes_path), str(out), args.views,
                                                  ref_frames, args.mesh, args.precision))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            raise SystemExit(f"[{arch}] {mode} mode failed (exit code {proc.exitcode})")
        data = np.load(out)
        results[mode] = {"timings": json.loads(str(data["timings"])), "peak_rss_gb": float(data["peak_rss_gb"]),
                         "gpu_peak_gb": float(data["gpu_peak_gb"]), "frames": data["frames"],
                         "mesh": (data["vertices"], data["faces"]), "frames_timed": int(data["video_frames_timed"]),
                         "planes_error": float(data["planes_error"]), "asset": json.loads(str(data["asset"]))}
        print(f"[{arch}] {mode:9s} " + "  ".join(f"{k} {v:8.2f}s" for k, v in results[mode]["timings"].items())
              + f"  peak RSS {results[mode]['peak_rss_gb']:.2f} GB", flush=True)
    fast, ref = results["fast"], results["reference"]
    stages = {}
    for stage in ("planes", "mesh", "asset", "video"):
        stages[stage] = {"reference_s": ref["timings"][stage], "fast_s": fast["timings"][stage],
                         "speedup": ref["timings"][stage] / fast["timings"][stage]}
    stages["video"]["reference_frames_timed"] = ref["frames_timed"]
    total_ref = sum(ref["timings"].values())
    total_fast = sum(fast["timings"].values())
    return {
        "full_job": {"reference_s": total_ref, "fast_s": total_fast, "speedup": total_ref / total_fast,
                     "psnr_db": psnr(fast["frames"], ref["frames"]),
                     "chamfer_voxels": chamfer_voxels(fast["mesh"], ref["mesh"], args.mesh),
                     # the metric's own floor: the reference mesh against itself, sampled with other seeds
                     "chamfer_floor_voxels": chamfer_voxels(ref["mesh"], ref["mesh"], args.mesh),
                     "peak_rss_gb": fast["peak_rss_gb"], "reference_peak_rss_gb": ref["peak_rss_gb"],
                     "gpu_peak_gb": fast["gpu_peak_gb"] if args.device == "cuda" else None},
        "stages": stages,
        "planes_relative_error": fast["planes_error"],  # of the fast mode's planes against fp32 (0 in fp32)
        "settings": {"mesh_resolution": args.mesh, "views": args.views, "render_size": render_size,
                     "precision": args.precision,
                     "reference_frames": ref_frames, "fit_steps": args.fit_steps},
        "mesh_vertices": {"fast": len(fast["mesh"][0]), "reference": len(ref["mesh"][0])},
        "asset": fast["asset"],  # the fast mode's light GLB at the defaults
    }


def machine_info(device: str) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "device": device}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def table(name: str, r: dict) -> str:
    lines = [f"\n{name}: full job {r['full_job']['reference_s']:.1f} s -> {r['full_job']['fast_s']:.1f} s "
             f"({r['full_job']['speedup']:.1f}x), video PSNR {r['full_job']['psnr_db']:.1f} dB, mesh Chamfer "
             f"{r['full_job']['chamfer_voxels']:.2f} voxels, peak RSS {r['full_job']['peak_rss_gb']:.2f} GB "
             f"(reference {r['full_job']['reference_peak_rss_gb']:.2f} GB)",
             f"{'stage':<8} {'reference s':>12} {'fast s':>9} {'speed-up':>9}"]
    for stage, s in r["stages"].items():
        lines.append(f"{stage:<8} {s['reference_s']:>12.2f} {s['fast_s']:>9.2f} {s['speedup']:>8.1f}x")
    a = r["asset"]
    lines.append(f"asset (GLB at the defaults): {a['triangles']:,} triangles, {a['glb_mb']:.2f} MB, texture "
                 f"{a['texture_psnr_db']:.1f} dB against the field's colours, {a['chamfer_voxels']:.2f} voxels from "
                 "the dense mesh")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from lrm.options import PRECISIONS
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small architecture, fewer fitting steps and reference "
                   "frames: a few minutes on 2 CPU cores")
    p.add_argument("--smoke", action="store_true", help="a tiny run of every stage (a check that it works, not a "
                   "measurement): small architecture, 48^3 mesh, 4 frames")
    p.add_argument("--arch", default=None, help="comma-separated: small, base [default: small,base; quick: small]")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--mesh", type=int, default=256, help="mesh resolution [256]")
    p.add_argument("--views", type=int, default=100, help="video frames [100]")
    p.add_argument("--ref-frames", type=int, default=None, help="reference frames actually rendered [12; quick 3]")
    p.add_argument("--fit-steps", type=int, default=None, help="plane fitting steps [600; quick 300]")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="autocast for the fast mode's planes stage (the reference stays fp32) [fp32]")
    p.add_argument("--warm", action="store_true", help="time requests the way the app runs them instead: the model "
                   "loaded once, then planes, mesh, asset and video (with their files); the median of 5")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.smoke:
        args.quick, args.mesh, args.views = True, 48, 4
        args.ref_frames, args.fit_steps = args.ref_frames or 1, args.fit_steps or 60
    args.arch = args.arch or ("small" if args.quick else "small,base")
    args.ref_frames = args.ref_frames or (3 if args.quick else 12)
    args.fit_steps = args.fit_steps or (300 if args.quick else 600)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    results = {"machine": machine_info(args.device), "architectures": {}}
    if args.warm:
        with tempfile.TemporaryDirectory() as tmp:
            results["warm"] = {arch.strip(): bench_warm(arch.strip(), args, Path(tmp)) for arch in args.arch.split(",")}
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.arch.split(","):
            r = bench_arch(arch.strip(), args, Path(tmp))
            results["architectures"][arch.strip()] = r
            print(table(arch.strip(), r), flush=True)
    first = next(iter(results["architectures"].values()))
    results.update(full_job=first["full_job"], stages=first["stages"])  # the first (small) architecture up front
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
