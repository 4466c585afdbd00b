"""The whole job in one call: image -> preprocessed image -> planes -> mesh files + orbit video, with timings."""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from PIL import Image
from torch import Tensor

from .asset import make_asset
from .camera import source_camera
from .fast import FastField
from .field import ReferenceField
from .mesh import EmptyMeshError, export_mesh, extract_mesh, obj_companions
from .model import LRM
from .options import JobOptions
from .preprocess import BackgroundRemover, ImageInput, check_visible, image_to_tensor, load_image, preprocess
from .video import render_video

# progress(stage, fraction): stage is one of STAGES, fraction in [0, 1] within that stage.
Progress = Callable[[str, float], None]
STAGES = ("preprocess", "planes", "mesh", "asset", "video")
# mode -> the field the mesh and the video are made from: OpenLRM's algorithms as they are, or the cached field
FIELDS = {"fast": FastField, "reference": ReferenceField}


@dataclass
class Reconstruction:
    image: Image.Image | None              # the preprocessed RGBA input
    planes: Tensor | None                  # [1, 3, C, H, W]
    mesh: object | None                    # the dense marching-cubes trimesh.Trimesh (triplane frame, z up) or None
    asset: object | None = None            # the light one written as GLB / OBJ (lrm.asset.make_asset); None
                                           # without a mesh, or when files are written but no GLB / OBJ
    files: dict[str, Path] = field(default_factory=dict)   # "png" (input), "glb", "obj", "mtl", "texture", "ply",
                                                           # "mp4" -> path
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    problems: list[str] = field(default_factory=list)      # what could not be made, and why (e.g. an empty mesh)

    def summary(self) -> str:
        """What the job made and how long each stage took, in one line; then one line per problem."""
        made = self.mesh if self.asset is None else self.asset
        sizes = ", ".join(f"{k.upper()} {self.files[k].stat().st_size / 1e6:.1f} MB" for k in ("glb", "obj", "ply")
                          if k in self.files)
        line = ("no mesh" if made is None else f"{len(made.faces):,} triangles") + (f" ({sizes})" if sizes else "")
        stages = " · ".join(f"{k} {v:.2f} s" for k, v in self.timings.items())
        return "\n".join([f"{line}; {sum(self.timings.values()):.2f} s: {stages}",
                          *(f"not made: {problem}" for problem in self.problems)])


def describe_error(err: BaseException) -> str:
    """One line for a job that failed, for its user: a ValueError / OSError says itself (the image, an option, the
    disk); running out of memory says what to lower; anything else is named as unexpected."""
    if isinstance(err, OSError) and err.strerror:  # no server paths: the file's name only
        text = err.strerror + (f": {Path(err.filename).name}" if err.filename else "")
    else:  # (the first paragraph: tools such as imageio's ffmpeg writer append their command line and log)
        text = " ".join(str(err).split("\n\n")[0].split())
    if isinstance(err, MemoryError) or "out of memory" in text.lower() or "tried to allocate" in text.lower():
        return ("out of memory: lower the mesh resolution, the video's frame size or the texture size, or use a "
                "smaller model")
    if isinstance(err, (ValueError, OSError)):
        return text or type(err).__name__
    return f"unexpected {type(err).__name__}: {text[:300]}" + (" …" if len(text) > 300 else "")


@contextlib.contextmanager
def _stage(result: Reconstruction, stage: str, report: Progress):
    """Report a stage's start and end and time it (a stage that raises is neither timed nor reported done)."""
    report(stage, 0.0)
    start = time.perf_counter()
    yield
    result.timings[stage] = time.perf_counter() - start
    report(stage, 1.0)


# A job's peak memory, measured on the embedded model (bench figures in docs/performance.md): the process and its
# libraries, then the largest stage: the mesh's G³ grid (the fast path keeps the upsampled density, its activation and
# the level's mask: 12 bytes a vertex; the reference path 8, beside the decoder's point chunks), the dense mesh's
# faces (~5 G² on a real object), the texture's texels while they are baked, a frame's pixels while it renders.
BASE_BYTES = 500 * 2 ** 20
GRID_BYTES = {"fast": 12, "reference": 8}
FACE_BYTES, FACES_PER_G2 = 150, 5
TEXEL_BYTES = 170
PIXEL_BYTES = 490
DECODER_BYTES = 36  # per point and plane channel of a decoder chunk (POINT_CHUNK points, RENDER_CHUNK samples)


class TooLargeError(ValueError):
    """A job that cannot fit the memory this machine (or its GPU) has."""


def memory_needed(job: JobOptions, model: LRM, writes: bool = True) -> dict[str, int]:
    """The estimated peak bytes of a job (its options filled in) per stage, besides the process and the weights.
    `writes`: whether it writes files (a job without an output folder makes no video)."""
    from .model import POINT_CHUNK, RENDER_CHUNK
    c, g = model.config.triplane_dim, job.mesh_resolution or 0
    decoder = DECODER_BYTES * c * (POINT_CHUNK if job.mode == "reference" else 2 ** 18)
    need = {"mesh": GRID_BYTES[job.mode] * g ** 3 + FACE_BYTES * FACES_PER_G2 * g ** 2 + decoder if g else 0}
    if g and {"glb", "obj"} & set(job.formats) and job.texture_size:
        need["texture"] = need["mesh"] // 4 + TEXEL_BYTES * job.texture_size ** 2
    if job.video and writes:
        need["video"] = PIXEL_BYTES * job.video_size ** 2 + (DECODER_BYTES * c * RENDER_CHUNK if job.mode ==
                                                              "reference" else 0)
    return need


def memory_available(device) -> int:
    """The memory a job may use: the GPU's for a CUDA model, else the machine's (its cgroup's limit, if lower)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:  # a memory cgroup (v2, or v1 as containers and tools/capped.sh set it)
        line = next(line for line in Path("/proc/self/cgroup").read_text().splitlines() if line.split(":")[1] in
                    ("", "memory"))
        folder = line.split(":", 2)[2].lstrip("/")
        for name in ("memory.max", f"memory/{folder}/memory.limit_in_bytes", f"{folder}/memory.max"):
            limit = Path("/sys/fs/cgroup", name).read_text().strip() if Path("/sys/fs/cgroup", name).is_file() else ""
            if limit.isdigit():
                total = min(total, int(limit))
    except (OSError, StopIteration, IndexError):
        pass
    return total


def check_memory(job: JobOptions, model: LRM, writes: bool = True) -> None:
    """Refuse a job whose estimated peak memory exceeds what this machine (or GPU) has, saying what to lower."""
    need = memory_needed(job, model, writes)
    stage = max(need, key=need.get) if need else None
    total = sum(p.numel() * p.element_size() for p in model.parameters()) + (
        BASE_BYTES if model.device.type == "cpu" else 0) + (need[stage] if stage else 0)
    have = memory_available(model.device)
    if total > have:
        lower = {"mesh": "the mesh resolution", "texture": "the texture size", "video": "the video's frame size"}[stage]
        raise TooLargeError(f"this job needs about {total / 2 ** 30:.1f} GB of memory, most of it for the {stage} "
                            f"({need[stage] / 2 ** 30:.1f} GB), and this machine has {have / 2 ** 30:.1f} GB; "
                            f"lower {lower}")


class FieldError(ValueError):
    """The model's field is not finite for this input: nothing sensible can be made from it."""


MAX_STEM_BYTES = 64  # output names are shortened to this (UTF-8 bytes): far below any file system's 255 with suffixes


def output_stem(text: str) -> str:
    """A file name stem for outputs, safe in every file we write and on every disk: letters, digits, "_", "-" and "."
    only (no path separators, spaces or control characters, which would also break an OBJ's `mtllib` line), no leading
    or trailing dots (no hidden files), at most MAX_STEM_BYTES; "object" when nothing is left."""
    stem = re.sub(r"[^\w.-]+", "_", text).strip("._-")
    while len(stem.encode()) > MAX_STEM_BYTES:
        stem = stem[:-1]
    return stem.rstrip("._-") or "object"


def output_names(name: str, job: JobOptions) -> dict[str, str]:
    """The files a job writes for the image named `name`: "png" (the preprocessed input), "glb", "obj", "mtl",
    "texture", "ply", "mp4" -> file name. (A job may make fewer: an empty mesh writes no mesh files.)"""
    names = {"png": f"{name}_input.png"}
    if job.mesh_resolution != 0:
        names |= {fmt: f"{name}.{fmt}" for fmt in job.formats}
        if "obj" in job.formats and job.texture_size:
            names |= obj_companions(name)  # as lrm.export_mesh writes them
    if job.video:
        names["mp4"] = f"{name}.mp4"
    return names


def reconstruct(model: LRM, image: ImageInput, out_dir: str | Path | None = None,
                options: JobOptions | None = None, *, name: str = "model", remover: BackgroundRemover | None = None,
                preprocessed: bool = False, progress: Progress | None = None) -> Reconstruction:
    """Run the whole job on one image and return the finished `Reconstruction`.

    Args:
        model: a loaded `LRM`.
        image: a path, PIL image or uint8 array; with preprocessed=True, the output of `lrm.preprocess` (used as is).
        out_dir: where to write `<name>_input.png`, `<name>.{glb,obj,ply}` and `<name>.mp4`; None writes nothing
            (the mesh and planes are still returned).
        options: what to make (`JobOptions`; default: `JobOptions()`, the model's own settings).
        name: the output files' stem. remover: the background remover (default: rembg, one shared session).
        progress: progress(stage, fraction) is called while working; stage is one of `STAGES`.
    Returns:
        `Reconstruction` with the preprocessed image, planes, mesh, written files and per-stage seconds.
    """
    result = None
    for _, result in reconstruct_steps(model, image, out_dir, options, name=name, remover=remover,
                                       preprocessed=preprocessed, progress=progress):
        pass
    return result


def _planes(model: LRM, image: Image.Image, job: JobOptions) -> torch.Tensor:
    """The triplanes of a preprocessed image; FieldError when they are not finite (no threshold's fault: no mesh or
    video can come of them)."""
    with torch.inference_mode():
        x = image_to_tensor(image, model.infer_defaults.source_size)
        planes = model.forward_planes(x, source_camera(job.source_distance), precision=job.precision)
    if not torch.isfinite(planes).all():
        raise FieldError("the model's planes for this image are not finite (NaN or inf): the checkpoint's weights "
                         f"may be damaged, or precision {job.precision} overflowed (try fp32)")
    return planes


def reconstruct_steps(model: LRM, image: ImageInput, out_dir: str | Path | None = None,
                      options: JobOptions | None = None, *, name: str = "model",
                      remover: BackgroundRemover | None = None, preprocessed: bool = False,
                      progress: Progress | None = None) -> Iterator[tuple[str, Reconstruction]]:
    """`reconstruct`, yielding (stage, partial result) after each finished stage, so callers can show the mesh
    before the video is done."""
    job = (options or JobOptions()).for_model(model.infer_defaults)
    check_memory(job, model, writes=out_dir is not None)
    names = output_names(name, job)
    report = progress or (lambda stage, fraction: None)
    out = Path(out_dir) if out_dir is not None else None
    result = Reconstruction(image=None, planes=None, mesh=None)

    with _stage(result, "preprocess", report):
        result.image = check_visible(load_image(image)) if preprocessed else preprocess(
            image, remove_background=job.remove_background, foreground_ratio=job.foreground_ratio, remover=remover)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            result.files["png"] = out / names["png"]
            result.image.save(result.files["png"])
    yield "preprocess", result

    with _stage(result, "planes", report):
        result.planes = _planes(model, result.image, job)
    yield "planes", result

    prepared = None  # the field, made once and shared by the mesh, the asset and the video
    if job.mesh_resolution:
        with _stage(result, "mesh", report):
            prepared = FIELDS[job.mode](model, result.planes)
            try:
                result.mesh = extract_mesh(prepared, job.mesh_resolution, job.threshold,
                                           progress=lambda done, total: report("mesh", 0.9 * done / total))
            except EmptyMeshError as err:  # the video can still show what there is
                result.problems.append(f"mesh: {err}")
            if out is not None and result.mesh is not None and "ply" in job.formats:
                result.files["ply"] = export_mesh(result.mesh, out / names["ply"])  # the faithful, dense mesh
        yield "mesh", result

    # the light asset is what the GLB / OBJ files hold: made when one is written, or always for a caller without files
    if result.mesh is not None and (out is None or {"glb", "obj"} & set(job.formats)):
        with _stage(result, "asset", report):
            result.asset = make_asset(prepared, result.mesh, job.faces, job.texture_size, job.keep_floaters,
                                      name=f"{name}_texture")
            for fmt in ("glb", "obj"):
                if out is not None and fmt in job.formats:
                    result.files[fmt] = export_mesh(result.asset, out / names[fmt])
                    if fmt == "obj" and job.texture_size:
                        result.files |= {key: out / names[key] for key in obj_companions(name)}
        yield "asset", result

    if job.video and out is not None:
        with _stage(result, "video", report):
            prepared = prepared or FIELDS[job.mode](model, result.planes)
            result.files["mp4"] = render_video(prepared, out / names["mp4"], job.n_views, job.fps, job.video_size,
                                               progress=lambda done, total: report("video", done / total))
        yield "video", result
