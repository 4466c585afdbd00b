"""The whole job in one call: image -> preprocessed image -> planes -> mesh files + orbit video, with timings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal

import torch
from PIL import Image
from torch import Tensor

from .camera import source_camera
from .fast import FastField
from .mesh import MESH_FORMATS, export_mesh, extract_mesh
from .model import LRM
from .preprocess import BackgroundRemover, ImageInput, image_to_tensor, load_image, preprocess
from .video import render_video

# progress(stage, fraction): stage is one of STAGES, fraction in [0, 1] within that stage.
Progress = Callable[[str, float], None]
STAGES = ("preprocess", "planes", "mesh", "video")


@dataclass
class Reconstruction:
    image: Image.Image | None              # the preprocessed RGBA input
    planes: Tensor | None                  # [1, 3, C, H, W]
    mesh: object | None                    # trimesh.Trimesh (triplane frame, z up) or None
    files: dict[str, Path] = field(default_factory=dict)   # "png", "glb", "obj", "ply", "mp4" -> path
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    def summary(self) -> str:
        return "  ".join(f"{k} {v:.2f}s" for k, v in self.timings.items())


def _timed(timings: dict[str, float], stage: str):
    class _Timer:
        def __enter__(self):
            self.start = time.perf_counter()

        def __exit__(self, *exc):
            if exc[0] is None:
                timings[stage] = time.perf_counter() - self.start
    return _Timer()


def reconstruct(model: LRM, image: ImageInput, out_dir: str | Path | None = None, **options) -> Reconstruction:
    """Run the whole job on one image and return the finished `Reconstruction`.

    Args:
        model: a loaded `LRM`.
        image: a path, PIL image or uint8 array; with preprocessed=True, the output of `lrm.preprocess` (used as is).
        out_dir: where to write `<name>_input.png`, `<name>.{glb,obj,ply}` and `<name>.mp4`; None writes nothing
            (the mesh and planes are still returned).
        **options: see `reconstruct_steps` (name, remove_background, foreground_ratio, source_distance,
            mesh_resolution, threshold, formats, video, n_views, fps, video_size, remover, preprocessed, mode,
            precision, progress).
    Returns:
        `Reconstruction` with the preprocessed image, planes, mesh, written files and per-stage seconds.
    """
    result = None
    for _, result in reconstruct_steps(model, image, out_dir, **options):
        pass
    return result


def reconstruct_steps(model: LRM, image: ImageInput, out_dir: str | Path | None = None, *, name: str = "model",
                      remove_background: bool = True, foreground_ratio: float | None = None,
                      source_distance: float = 2.0,
                      mesh_resolution: int | None = None, threshold: float | None = None,
                      formats: Iterable[str] = MESH_FORMATS, video: bool = True, n_views: int = 100, fps: int = 25,
                      video_size: int | None = None, remover: BackgroundRemover | None = None,
                      preprocessed: bool = False, mode: Literal["fast", "reference"] = "fast",
                      precision: str = "fp32", progress: Progress | None = None
                      ) -> Iterator[tuple[str, Reconstruction]]:
    """`reconstruct`, yielding (stage, partial result) after each finished stage, so callers can show the mesh
    before the video is done.

    foreground_ratio: the object's size after recentring (default: the model's; 0.85 for the released models, the
    reference app's). mesh_resolution, threshold: marching-cubes grid and density level (default: the model's, 384 and
    3.0);
    mesh_resolution=0 skips the mesh. formats: mesh files to write (any of "glb", "obj", "ply"). video, n_views,
    fps, video_size: the orbit video (default size: the model's render size). mode: "fast" (default) or "reference"
    (OpenLRM's exact algorithms; see lrm/fast.py). precision: "fp32" (default), "bf16" or "fp16" autocast for the
    planes (`LRM.forward_planes`). progress(stage, fraction) is called while working.
    """
    formats = [f.lower().lstrip(".") for f in formats]
    unknown = sorted(set(formats) - set(MESH_FORMATS))
    if unknown:
        raise ValueError(f"unknown mesh format(s) {unknown}; use {', '.join(MESH_FORMATS)}")
    report = progress or (lambda stage, fraction: None)
    defaults = model.infer_defaults
    mesh_resolution = defaults.mesh_size if mesh_resolution is None else mesh_resolution
    threshold = defaults.mesh_threshold if threshold is None else threshold
    foreground_ratio = defaults.foreground_ratio if foreground_ratio is None else foreground_ratio
    out = Path(out_dir) if out_dir is not None else None
    result = Reconstruction(image=None, planes=None, mesh=None)

    report("preprocess", 0.0)
    with _timed(result.timings, "preprocess"):
        result.image = load_image(image) if preprocessed else preprocess(
            image, remove_background=remove_background, foreground_ratio=foreground_ratio, remover=remover)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        result.files["png"] = out / f"{name}_input.png"
        result.image.save(result.files["png"])
    report("preprocess", 1.0)
    yield "preprocess", result

    report("planes", 0.0)
    with _timed(result.timings, "planes"), torch.inference_mode():
        x = image_to_tensor(result.image, defaults.source_size)
        result.planes = model.forward_planes(x, source_camera(source_distance), precision=precision)
    report("planes", 1.0)
    yield "planes", result

    fast = None  # the coarse density pass, shared by the mesh and the video
    if mesh_resolution:
        report("mesh", 0.0)
        with _timed(result.timings, "mesh"):
            if mode == "fast":
                fast = FastField(model, result.planes)
            result.mesh = extract_mesh(model, result.planes, mesh_resolution, threshold, mode=mode, fast=fast,
                                       progress=lambda done, total: report("mesh", 0.9 * done / total))
            if out is not None:
                for fmt in formats:
                    result.files[fmt] = export_mesh(result.mesh, out / f"{name}.{fmt}")
        report("mesh", 1.0)
        yield "mesh", result

    if video and out is not None:
        report("video", 0.0)
        with _timed(result.timings, "video"):
            result.files["mp4"] = render_video(model, result.planes, out / f"{name}.mp4", n_views, fps, video_size,
                                               mode=mode, fast=fast,
                                               progress=lambda done, total: report("video", done / total))
        report("video", 1.0)
        yield "video", result
