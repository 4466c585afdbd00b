"""Command line: `python -m lrm IMAGE_OR_FOLDER... --model ID_OR_PATH --out DIR` writes meshes and orbit videos."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .hub import DEFAULT_MODEL, load_model, load_model_or_demo
from .mesh import MESH_FORMATS
from .model import PRECISIONS
from .pipeline import MODES, STAGES, JobOptions, reconstruct

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".jfif"}
JOB = JobOptions()  # the defaults


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of a job (`lrm.JobOptions`), shared by this command and `python -m lrm.batch`."""
    p.add_argument("--formats", default=",".join(JOB.formats),
                   help=f"mesh formats, comma separated (any of {', '.join(MESH_FORMATS)}) [default: %(default)s]")
    p.add_argument("--mesh-resolution", type=int, default=JOB.mesh_resolution,
                   help="marching-cubes grid size, 0 = no mesh [default: the model's; 384 for the released models]")
    p.add_argument("--threshold", type=float, default=JOB.threshold,
                   help="density level of the surface [default: the model's, 3.0]")
    p.add_argument("--faces", type=int, default=JOB.faces,
                   help="the GLB / OBJ asset's triangles after decimation, 0 = every marching-cubes triangle "
                   "[default: %(default)s]")
    p.add_argument("--texture-size", type=int, default=JOB.texture_size,
                   help="side of its baked texture (a power of two), 0 = vertex colours [default: %(default)s]")
    p.add_argument("--keep-floaters", action="store_true",
                   help="keep small disconnected pieces (--faces 0 --texture-size 0 --keep-floaters: the dense mesh "
                   "as OpenLRM makes it; the PLY is always that)")
    p.add_argument("--video", action=argparse.BooleanOptionalAction, default=JOB.video, help="write the orbit video")
    p.add_argument("--views", type=int, default=JOB.n_views, help="frames in the orbit video [default: %(default)s]")
    p.add_argument("--fps", type=int, default=JOB.fps, help="video frame rate [default: %(default)s]")
    p.add_argument("--video-size", type=int, default=JOB.video_size,
                   help="video frame size [default: the model's render size]")
    p.add_argument("--no-rembg", action="store_true", help="do not remove the background (alpha is still used)")
    p.add_argument("--foreground-ratio", type=float, default=JOB.foreground_ratio,
                   help="object size relative to the image side after recentring [default: the model's; 0.85 for "
                   "the released models, 0.6 for lrm-demo-shapes]")
    p.add_argument("--source-distance", type=float, default=JOB.source_distance,
                   help="input camera distance [default: the model's, 2.0]")
    p.add_argument("--precision", choices=PRECISIONS, default=JOB.precision,
                   help="autocast for the planes (encoder + transformer): bf16/fp16 use tensor cores on a GPU or AMX "
                   "on recent CPUs, at ~1%% deviation of the planes [default: fp32, the reference's arithmetic]")
    p.add_argument("--mode", choices=MODES, default=JOB.mode,
                   help="fast: skip empty space (default); reference: OpenLRM's exact, slow algorithms")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lrm", description="Single image to 3D with OpenLRM checkpoints: "
                                "writes a coloured mesh (GLB/OBJ/PLY) and an orbit video (MP4) per input image.")
    p.add_argument("inputs", nargs="+", help="image files or folders (searched recursively for images)")
    p.add_argument("--model", default=None, help="Hugging Face repo id or local checkpoint (folder or file) [default: "
                   f"{DEFAULT_MODEL}, or the embedded demo model when that cannot be obtained]")
    p.add_argument("--out", default="outputs", help="output folder [default: outputs]")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="[default: cpu]")
    add_job_arguments(p)
    return p.parse_args(argv)


def job_options(args: argparse.Namespace) -> JobOptions:
    """The job the command line describes; ValueError names a bad option."""
    return JobOptions(remove_background=not args.no_rembg, foreground_ratio=args.foreground_ratio,
                      source_distance=args.source_distance, mesh_resolution=args.mesh_resolution,
                      threshold=args.threshold, formats=tuple(args.formats.split(",")), faces=args.faces,
                      texture_size=args.texture_size, keep_floaters=args.keep_floaters, video=args.video,
                      n_views=args.views, fps=args.fps, video_size=args.video_size, mode=args.mode,
                      precision=args.precision)


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


class StageLog:
    """Progress of the images' stages: a bar on a terminal; where nobody watches (a log, a pipe), one line per stage
    (a bar's carriage-return updates would become hundreds of lines)."""

    def __init__(self, images: int, stream=None):
        from tqdm.auto import tqdm
        self.stream = stream or sys.stderr
        self.bar = tqdm(total=images * len(STAGES), unit="stage", dynamic_ncols=True, file=self.stream) \
            if self.stream.isatty() else None
        self.done, self.current = 0, None

    def start(self, name: str) -> None:
        self.name, self.current = name, None

    def update(self, stage: str, fraction: float) -> None:
        if self.bar is not None:
            self.bar.set_description(f"{self.name}: {stage}")
            self.bar.n = self.done + STAGES.index(stage) + fraction
            self.bar.update(0)  # redraws at most every tqdm.mininterval
        elif stage != self.current:
            self.current = stage
            print(f"{self.name}: {stage}", file=self.stream, flush=True)

    def finish(self, line: str) -> None:
        """End the current image with a result line."""
        self.done += len(STAGES)
        if self.bar is not None:
            self.bar.n = self.done
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        options = job_options(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    images = collect_images(args.inputs)
    if not images:
        print("error: no images found in the given folders", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda was asked for but no CUDA device is available; use --device cpu", file=sys.stderr)
        return 2

    start = time.perf_counter()
    try:  # only the default model falls back to the embedded one; a model asked for by name loads or is an error
        model, note = load_model_or_demo(DEFAULT_MODEL, device=args.device) if args.model is None else \
            (load_model(args.model, device=args.device), None)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: cannot load model {args.model or DEFAULT_MODEL!r}: {err}", file=sys.stderr)
        return 2
    if note:
        print(f"NOTE: no --model given; {note}", file=sys.stderr)
    print(f"model {model.source} ({model.release}) loaded in {time.perf_counter() - start:.1f}s on {args.device}")

    failures = 0
    log = StageLog(len(images))
    for path, name in images:
        log.start(name)
        try:
            result = reconstruct(model, path, Path(args.out) / Path(name).parent, options, name=Path(name).name,
                                 progress=log.update)
        except (ValueError, OSError) as err:  # bad image, bad option, disk problems: report, go on
            failures += 1
            log.finish(f"FAILED {path}: {err}")
            continue
        mesh = "no mesh" if result.mesh is None else f"{len(result.asset.faces):,} triangles" if result.asset \
            is not None else f"{len(result.mesh.faces):,} triangles"
        written = ",".join(k for k in result.files if k in ("glb", "obj", "ply", "mp4"))
        status = "ok    " if not result.problems else "PARTLY"
        log.finish(f"{status} {path} -> {Path(args.out) / name}.{{{written}}}  {mesh}  {result.summary()}"
                   + "".join(f"\n       {problem}" for problem in result.problems))
        failures += bool(result.problems)
    log.close()
    print(f"{len(images) - failures}/{len(images)} done in {time.perf_counter() - start:.1f}s, output in {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
