"""The whole job in one call: image -> preprocessed image -> planes -> mesh files + orbit video, with timings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator, Literal, get_args

import torch
from PIL import Image
from torch import Tensor

from .asset import FACES, TEXTURE_SIZE, make_asset
from .camera import source_camera
from .config import InferDefaults
from .fast import FastField
from .field import ReferenceField
from .mesh import MESH_FORMATS, EmptyMeshError, export_mesh, extract_mesh
from .model import LRM, PRECISIONS, Precision
from .preprocess import BackgroundRemover, ImageInput, check_visible, image_to_tensor, load_image, preprocess
from .video import render_video

# progress(stage, fraction): stage is one of STAGES, fraction in [0, 1] within that stage.
Progress = Callable[[str, float], None]
STAGES = ("preprocess", "planes", "mesh", "asset", "video")

Mode = Literal["fast", "reference"]
MODES: tuple[str, ...] = get_args(Mode)
# mode -> the field the mesh and the video are made from: OpenLRM's algorithms as they are, or the cached field
FIELDS = {"fast": FastField, "reference": ReferenceField}


@dataclass(frozen=True)
class JobOptions:
    """What one reconstruction job makes; the CLI, the app and the library all describe a job with it.

    None means "the model's own setting" (`LRM.infer_defaults`), filled in by `for_model`.
    """
    remove_background: bool = True          # rembg, unless the image has an alpha channel already
    foreground_ratio: float | None = None   # object size after recentring (0.85 for the released models)
    source_distance: float | None = None    # conditioning camera distance (2.0, the reference's)
    mesh_resolution: int | None = None      # marching-cubes grid (384 for the released models); 0: no mesh
    threshold: float | None = None          # density level of the surface (3.0)
    formats: tuple[str, ...] = MESH_FORMATS  # mesh files to write: PLY the dense mesh, GLB / OBJ the asset
    faces: int = FACES                      # the asset's triangles after decimation; 0: every marching-cubes one
    texture_size: int = TEXTURE_SIZE        # its baked texture's side (a power of two); 0: vertex colours
    keep_floaters: bool = False             # keep small disconnected pieces (lrm.asset.FLOATER_SHARE)
    video: bool = True                      # the orbit video
    n_views: int = 100                      # its frames (OpenLRM's Gradio demo: 100 views at 25 fps)
    fps: int = 25
    video_size: int | None = None           # its frame size (the model's render size)
    mode: Mode = "fast"                     # "reference": OpenLRM's exact, slow algorithms (lrm/fast.py says why)
    precision: Precision = "fp32"           # autocast for the planes (`LRM.forward_planes`)

    def __post_init__(self):
        formats = tuple(dict.fromkeys(f.strip().lower().lstrip(".") for f in self.formats if f.strip()))
        object.__setattr__(self, "formats", formats)
        if unknown := sorted(set(formats) - set(MESH_FORMATS)):
            raise ValueError(f"unknown mesh format(s) {unknown}; use {', '.join(MESH_FORMATS)}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.foreground_ratio is not None and not 0.1 <= self.foreground_ratio <= 1.0:
            raise ValueError(f"foreground ratio must be in [0.1, 1], got {self.foreground_ratio}")
        if self.source_distance is not None and not self.source_distance > 0:
            raise ValueError(f"source distance must be positive, got {self.source_distance}")
        if self.mesh_resolution is not None and (self.mesh_resolution < 0 or self.mesh_resolution == 1):
            raise ValueError(f"mesh resolution must be 0 (no mesh) or at least 2, got {self.mesh_resolution}")
        if self.threshold is not None and not self.threshold > 0:
            raise ValueError(f"the density threshold must be positive, got {self.threshold}")
        if self.faces != 0 and not self.faces >= 100:
            raise ValueError(f"faces must be 0 (keep every triangle) or at least 100, got {self.faces}")
        if self.texture_size and (self.texture_size < 0 or self.texture_size & (self.texture_size - 1)
                                  or self.texture_size > 8192):
            raise ValueError(f"texture size must be a power of two up to 8192 (or 0: vertex colours), got "
                             f"{self.texture_size}")
        if self.n_views < 1 or self.fps < 1:
            raise ValueError(f"video views and fps must be at least 1, got {self.n_views} and {self.fps}")
        if self.video_size is not None and (self.video_size < 2 or self.video_size % 2):
            raise ValueError(f"video size must be even and at least 2 (H.264 yuv420p), got {self.video_size}")

    def for_model(self, defaults: InferDefaults) -> "JobOptions":
        """These options with every unset (None) value taken from a model's inference defaults."""
        own = {"foreground_ratio": defaults.foreground_ratio, "source_distance": defaults.source_cam_dist,
               "mesh_resolution": defaults.mesh_size, "threshold": defaults.mesh_threshold,
               "video_size": defaults.render_size}
        return replace(self, **{k: v for k, v in own.items() if getattr(self, k) is None})


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
        return "  ".join(f"{k} {v:.2f}s" for k, v in self.timings.items())


def _timed(timings: dict[str, float], stage: str):
    class _Timer:
        def __enter__(self):
            self.start = time.perf_counter()

        def __exit__(self, *exc):
            if exc[0] is None:
                timings[stage] = time.perf_counter() - self.start
    return _Timer()


def output_names(name: str, job: JobOptions) -> dict[str, str]:
    """The files a job writes for the image named `name`: "png" (the preprocessed input), "glb", "obj", "mtl",
    "texture", "ply", "mp4" -> file name. (A job may make fewer: an empty mesh writes no mesh files.)"""
    names = {"png": f"{name}_input.png"}
    if job.mesh_resolution != 0:
        names |= {fmt: f"{name}.{fmt}" for fmt in job.formats}
        if "obj" in job.formats and job.texture_size:
            names |= {"mtl": f"{name}.mtl", "texture": f"{name}_texture.png"}  # as lrm.export_mesh writes them
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


def reconstruct_steps(model: LRM, image: ImageInput, out_dir: str | Path | None = None,
                      options: JobOptions | None = None, *, name: str = "model",
                      remover: BackgroundRemover | None = None, preprocessed: bool = False,
                      progress: Progress | None = None) -> Iterator[tuple[str, Reconstruction]]:
    """`reconstruct`, yielding (stage, partial result) after each finished stage, so callers can show the mesh
    before the video is done."""
    job = (options or JobOptions()).for_model(model.infer_defaults)
    names = output_names(name, job)
    report = progress or (lambda stage, fraction: None)
    out = Path(out_dir) if out_dir is not None else None
    result = Reconstruction(image=None, planes=None, mesh=None)

    report("preprocess", 0.0)
    with _timed(result.timings, "preprocess"):
        result.image = check_visible(load_image(image)) if preprocessed else preprocess(
            image, remove_background=job.remove_background, foreground_ratio=job.foreground_ratio, remover=remover)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        result.files["png"] = out / names["png"]
        result.image.save(result.files["png"])
    report("preprocess", 1.0)
    yield "preprocess", result

    report("planes", 0.0)
    with _timed(result.timings, "planes"), torch.inference_mode():
        x = image_to_tensor(result.image, model.infer_defaults.source_size)
        result.planes = model.forward_planes(x, source_camera(job.source_distance), precision=job.precision)
    report("planes", 1.0)
    yield "planes", result

    prepared = None  # the field, made once and shared by the mesh, the asset and the video
    if job.mesh_resolution:
        report("mesh", 0.0)
        with _timed(result.timings, "mesh"):
            prepared = FIELDS[job.mode](model, result.planes)
            try:
                result.mesh = extract_mesh(prepared, job.mesh_resolution, job.threshold,
                                           progress=lambda done, total: report("mesh", 0.9 * done / total))
            except EmptyMeshError as err:  # the video can still show what there is
                result.problems.append(f"mesh: {err}")
            if out is not None and result.mesh is not None and "ply" in job.formats:
                result.files["ply"] = export_mesh(result.mesh, out / names["ply"])  # the faithful, dense mesh
        report("mesh", 1.0)
        yield "mesh", result

    # the light asset is what the GLB / OBJ files hold: made when one is written, or always for a caller without files
    if result.mesh is not None and (out is None or {"glb", "obj"} & set(job.formats)):
        report("asset", 0.0)
        with _timed(result.timings, "asset"):
            result.asset = make_asset(prepared, result.mesh, job.faces, job.texture_size, job.keep_floaters,
                                      name=f"{name}_texture")
            for fmt in ("glb", "obj"):
                if out is not None and fmt in job.formats:
                    result.files[fmt] = export_mesh(result.asset, out / names[fmt])
                    if fmt == "obj" and job.texture_size:
                        result.files["mtl"], result.files["texture"] = out / names["mtl"], out / names["texture"]
        report("asset", 1.0)
        yield "asset", result

    if job.video and out is not None:
        report("video", 0.0)
        with _timed(result.timings, "video"):
            prepared = prepared or FIELDS[job.mode](model, result.planes)
            result.files["mp4"] = render_video(prepared, out / names["mp4"], job.n_views, job.fps, job.video_size,
                                               progress=lambda done, total: report("video", done / total))
        report("video", 1.0)
        yield "video", result
