"""What `python -m lrm` and `python -m lrm.batch` share: the job's flags, the job they describe, which files are images
and the names their outputs get (one rule, also the app's: `lrm.pipeline.output_stem`)."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Iterable

from .config import InferDefaults
from .options import MESH_FORMATS, MODES, PRECISIONS, JobOptions
from .pipeline import output_stem

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".jfif"}
JOB = JobOptions()  # the defaults
RELEASED = InferDefaults()  # the released models' own settings (where a job leaves them unset)


# The job's flags: (flag, JobOptions field, type, help). Each default is the field's own.
NUMBERS = [
    ("--mesh-resolution", "mesh_resolution", int,
     f"marching-cubes grid size, 0 = no mesh [default: the model's; {RELEASED.mesh_resolution} for the released "
     "models]"),
    ("--threshold", "threshold", float,
     f"density level of the surface [default: the model's; {RELEASED.threshold:g} for the released models]"),
    ("--faces", "faces", int,
     "the GLB / OBJ asset's triangles after decimation, 0 = every marching-cubes triangle [default: %(default)s]"),
    ("--texture-size", "texture_size", int,
     "side of its baked texture (a power of two), 0 = vertex colours [default: %(default)s]"),
    ("--views", "n_views", int, "frames in the orbit video [default: %(default)s]"),
    ("--fps", "fps", int, "video frame rate [default: %(default)s]"),
    ("--video-size", "video_size", int, "video frame size [default: the model's render size]"),
    ("--foreground-ratio", "foreground_ratio", float,
     "object size relative to the image side after recentring [default: the model's; "
     f"{RELEASED.foreground_ratio:g} for the released models]"),
    ("--source-distance", "source_distance", float,
     f"input camera distance [default: the model's; {RELEASED.source_distance:g} for the released models]"),
]
FLAGS = {field: flag for flag, field, _, _ in NUMBERS} | {"remove_background": "--no-rembg"}


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of a job (`lrm.JobOptions`) and --debug."""
    p.add_argument("--formats", default=",".join(JOB.formats),
                   help=f"mesh formats, comma separated (any of {', '.join(MESH_FORMATS)}) [default: %(default)s]")
    for flag, field, kind, text in NUMBERS:
        p.add_argument(flag, dest=field, type=kind, default=getattr(JOB, field), help=text,
                       metavar=flag[2:].upper().replace("-", "_"))
    p.add_argument("--keep-floaters", action="store_true",
                   help="keep small disconnected pieces (--faces 0 --texture-size 0 --keep-floaters: the dense mesh "
                   "as OpenLRM makes it; the PLY is always that)")
    p.add_argument("--video", action=argparse.BooleanOptionalAction, default=JOB.video, help="write the orbit video")
    p.add_argument("--no-rembg", action="store_true", help="do not remove the background (alpha is still used)")
    p.add_argument("--precision", choices=PRECISIONS, default=JOB.precision,
                   help="autocast for the planes (encoder + transformer): bf16/fp16 use tensor cores on a GPU or AMX "
                   "on recent CPUs, at ~1%% deviation of the planes [default: fp32, the reference's arithmetic]")
    p.add_argument("--mode", choices=MODES, default=JOB.mode,
                   help="fast: skip empty space (default); reference: OpenLRM's exact, slow algorithms")
    p.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")


def job_options(args: argparse.Namespace) -> JobOptions:
    """The job the command line describes; ValueError names a bad option by its flag."""
    try:
        return JobOptions(remove_background=not args.no_rembg, formats=args.formats, keep_floaters=args.keep_floaters,
                          video=args.video, mode=args.mode, precision=args.precision,
                          **{field: getattr(args, field) for _, field, _, _ in NUMBERS})
    except ValueError as err:  # "video_size must be ..." -> "--video-size must be ..."
        name = re.match(r"\w*", str(err)).group()
        raise ValueError(FLAGS.get(name, "--" + name.replace("_", "-")) + str(err)[len(name):]) from None


def error(message: str) -> int:
    """Print a one-line error for the user -> exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    return 2


# ----------------------------------------------------------------------------------------------------------------
# Inputs and their output names


def is_image(path: str) -> bool:
    return PurePosixPath(path).suffix.lower() in IMAGE_SUFFIXES


@dataclass(frozen=True)
class Input:
    """One image to reconstruct: where it is (a path or URI) and its outputs' name (a path relative to OUTPUT without
    a suffix: `sub/cone`). `note` says why the name is not the input's own ("", usually)."""
    source: str
    name: str
    note: str = ""


def name_inputs(found: Iterable[tuple[str, str]]) -> list[Input]:
    """(source, wanted name) pairs, in order -> Inputs whose names are safe for every file we write (each folder and
    the stem by `output_stem`) and distinct: a name already taken (letter case aside, as on case-insensitive disks)
    gets -2, -3, ... and a note saying which input has it."""
    taken: dict[str, str] = {}  # casefolded name -> the source that has it
    inputs = []
    for source, wanted in found:
        parts = [output_stem(part) for part in PurePosixPath(wanted).parts if part not in ("", ".", "..", "/")]
        base = "/".join(parts) or output_stem("")
        name, n = base, 1
        while name.casefold() in taken:
            n += 1
            name = f"{base}-{n}"
        note = f"named {name}: {base} is {taken[base.casefold()]}'s" if name != base else ""
        taken[name.casefold()] = source
        inputs.append(Input(source, name, note))
    return inputs


def local_images(items: Iterable[str], exclude: str | Path | None = None) -> list[Input]:
    """The images of local files and folders (searched recursively; names keep their sub-folders), except those
    under `exclude` (the output folder). A file given by name is taken whatever its suffix: a broken or missing one is
    reported when it is processed."""
    skip = Path(exclude).resolve() if exclude is not None else None
    found: list[tuple[str, str]] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file() and is_image(p.name)):
                if skip is None or not file.resolve().is_relative_to(skip):
                    found.append((str(file), str(file.relative_to(path).with_suffix(""))))
        else:
            found.append((str(path), path.stem))
    return name_inputs(found)
