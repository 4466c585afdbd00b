"""Command line: `python -m lrm IMAGE_OR_FOLDER... --model ID_OR_PATH --out DIR` writes meshes and orbit videos."""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import torch

from .cli import add_job_arguments, error, job_options, local_images
from .hub import DEFAULT_MODEL, choose_model, load_model
from .pipeline import STAGES, describe_error, reconstruct


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
        return error(str(err))
    images = local_images(args.inputs, exclude=args.out)
    if not images:
        return error("no images found in the given folders")
    if args.device == "cuda" and not torch.cuda.is_available():
        return error("--device cuda was asked for but no CUDA device is available; use --device cpu")

    start = time.perf_counter()
    # only the default model falls back to the embedded one; a model asked for by name loads or is an error
    choice = choose_model(args.model or DEFAULT_MODEL, fallback=args.model is None)
    try:
        model = load_model(choice.source, device=args.device)
    except (ValueError, FileNotFoundError) as err:
        return error(f"cannot load model {choice.requested!r}: {err}")
    if choice.note:
        print(f"NOTE: no --model given; {choice.note}", file=sys.stderr)
    print(f"model {model.source} ({model.release}) loaded in {time.perf_counter() - start:.1f}s on {args.device}")

    failures = 0
    log = StageLog(len(images))
    try:
        for image in images:
            failures += not run_one(model, image, args, options, log)
    except KeyboardInterrupt:
        log.close()
        print("interrupted", file=sys.stderr)
        return 130
    log.close()
    print(f"{len(images) - failures}/{len(images)} done in {time.perf_counter() - start:.1f}s, output in {args.out}")
    return 1 if failures else 0


def run_one(model, image, args: argparse.Namespace, options, log: StageLog) -> bool:
    """Reconstruct one input and print its line -> whether everything was made. Any failure but Ctrl-C is this
    input's alone: it is reported on its line and the others run."""
    log.start(image.name)
    dest = Path(args.out) / image.name
    note = f"  ({image.note})" if image.note else ""
    try:
        result = reconstruct(model, image.source, dest.parent, options, name=dest.name, progress=log.update)
    except Exception as err:  # noqa: BLE001 (reported per input; --debug shows the traceback)
        if args.debug:
            traceback.print_exc()
        log.finish(f"FAILED {image.source}: {describe_error(err)}{note}")
        return False
    written = ",".join(k for k in result.files if k in ("glb", "obj", "ply", "mp4"))
    status = "ok    " if not result.problems else "PARTLY"
    lines = result.summary().splitlines()
    log.finish(f"{status} {image.source} -> {dest}.{{{written}}}{note}  {lines[0]}"
               + "".join(f"\n       {line}" for line in lines[1:]))
    return not result.problems


if __name__ == "__main__":
    sys.exit(main())
