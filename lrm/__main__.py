"""Command line: `python -m lrm IMAGE_OR_FOLDER... --model ID_OR_PATH --out DIR` writes meshes and orbit videos."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .model import AUTOCAST

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".jfif"}
DEFAULT_MODEL = "zxhezexin/openlrm-mix-base-1.1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lrm", description="Single image to 3D with OpenLRM checkpoints: "
                                "writes a coloured mesh (GLB/OBJ/PLY) and an orbit video (MP4) per input image.")
    p.add_argument("inputs", nargs="+", help="image files or folders (searched recursively for images)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="Hugging Face repo id or local checkpoint (folder or file)"
                   f" [default: {DEFAULT_MODEL}]")
    p.add_argument("--out", default="outputs", help="output folder [default: outputs]")
    p.add_argument("--formats", default="glb,obj,ply", help="mesh formats, comma separated [default: glb,obj,ply]")
    p.add_argument("--mesh-resolution", type=int, default=None,
                   help="marching-cubes grid size, 0 = no mesh [default: the model's, 384]")
    p.add_argument("--threshold", type=float, default=None, help="density level of the surface [default: 3.0]")
    p.add_argument("--video", action=argparse.BooleanOptionalAction, default=True, help="write the orbit video")
    p.add_argument("--views", type=int, default=100, help="frames in the orbit video [default: 100]")
    p.add_argument("--fps", type=int, default=25, help="video frame rate [default: 25]")
    p.add_argument("--video-size", type=int, default=None, help="video frame size [default: the model's]")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="[default: cpu]")
    p.add_argument("--no-rembg", action="store_true", help="do not remove the background (alpha is still used)")
    p.add_argument("--foreground-ratio", type=float, default=None,
                   help="object size relative to the image side after recentring [default: the model's; 0.85 for "
                   "the released models, 0.6 for lrm-demo-shapes]")
    p.add_argument("--source-distance", type=float, default=2.0, help="input camera distance [default: 2.0]")
    p.add_argument("--precision", choices=list(AUTOCAST), default="fp32",
                   help="autocast for the planes (encoder + transformer): bf16/fp16 use tensor cores on a GPU or AMX "
                   "on recent CPUs, at ~1%% deviation of the planes [default: fp32, the reference's arithmetic]")
    p.add_argument("--mode", choices=["fast", "reference"], default="fast",
                   help="fast: skip empty space (default); reference: OpenLRM's exact, slow algorithms")
    return p.parse_args(argv)


def collect_images(inputs: list[str]) -> list[tuple[Path, str]]:
    """(path, output name) for every input; folders are walked, names keep their sub-folders."""
    found: list[tuple[Path, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
                found.append((file, str(file.relative_to(path).with_suffix(""))))
        else:
            found.append((path, path.stem))  # a missing or broken file is reported when it is processed
    return found


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from tqdm.auto import tqdm

    import lrm
    from lrm.pipeline import STAGES, reconstruct

    images = collect_images(args.inputs)
    if not images:
        print("error: no images found in the given folders", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda was asked for but no CUDA device is available; use --device cpu", file=sys.stderr)
        return 2
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]

    start = time.perf_counter()
    try:
        model, note = lrm.load_model_or_demo(args.model, device=args.device)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: cannot load model {args.model!r}: {err}", file=sys.stderr)
        return 2
    if note:
        print(f"NOTE: {note}", file=sys.stderr)
    print(f"model {model.source} ({model.release}) loaded in {time.perf_counter() - start:.1f}s on {args.device}")

    failures = 0
    bar = tqdm(total=len(images) * len(STAGES), unit="stage", dynamic_ncols=True)
    for path, name in images:
        done_before = bar.n

        def progress(stage: str, fraction: float) -> None:
            bar.set_description(f"{name}: {stage}")
            bar.n = done_before + STAGES.index(stage) + fraction
            bar.update(0)  # redraws at most every tqdm.mininterval

        try:
            result = reconstruct(model, path, Path(args.out) / Path(name).parent, name=Path(name).name,
                                 remove_background=not args.no_rembg, foreground_ratio=args.foreground_ratio,
                                 source_distance=args.source_distance, mesh_resolution=args.mesh_resolution,
                                 threshold=args.threshold, formats=formats, video=args.video, n_views=args.views,
                                 fps=args.fps, video_size=args.video_size, mode=args.mode,
                                 precision=args.precision, progress=progress)
        except (ValueError, OSError) as err:  # bad image, bad option, disk problems: report, go on
            failures += 1
            bar.n = done_before + len(STAGES)
            tqdm.write(f"FAILED {path}: {err}")
            continue
        bar.n = done_before + len(STAGES)
        mesh = f"{len(result.mesh.vertices)} vertices" if result.mesh is not None else "no mesh"
        written = ",".join(k for k in result.files if k != "png")
        tqdm.write(f"ok     {path} -> {Path(args.out) / name}.{{{written}}}  {mesh}  {result.summary()}")
    bar.close()
    print(f"{len(images) - failures}/{len(images)} done in {time.perf_counter() - start:.1f}s, output in {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
