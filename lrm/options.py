"""What one job makes (`JobOptions`), and the one place that checks every option's value.

The CLI's flags, the app's controls and the library's keyword arguments all end here: `check` refuses a value of the
wrong type, a non-finite number or one out of range with a `ValueError` that names the option and the value, in one
wording wherever it comes from. The stage functions (`lrm.extract_mesh`, `lrm.render_video`, `lrm.preprocess`, ...)
check their arguments with it too.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, get_args

import numpy as np

from .config import InferDefaults

Mode = Literal["fast", "reference"]
MODES: tuple[str, ...] = get_args(Mode)
Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
MESH_FORMATS = ("glb", "obj", "ply")

N_VIEWS, FPS = 100, 25  # the orbit video of OpenLRM's Gradio demo
FACES = 40_000          # the light asset's triangles (Hunyuan3D-2 decimates to 40k faces; SF3D keeps <= 20k vertices)
TEXTURE_SIZE = 1024     # its baked texture's side

# Upper bounds of the sizes that set a job's memory and time (the app keeps its own, tighter ones for a public page).
# A job's memory is mostly its grids: the mesh's G³ density (~12 bytes per vertex while it is made), a frame's rays
# (S samples each) and the texture's texels (~80 bytes each while baking).
LIMITS = {
    "mesh_resolution": 1024,
    "video_size": 2048,
    "n_views": 3600,
    "fps": 120,
    "texture_size": 8192,
    "faces": 10_000_000,
}


def _number(name: str, value: Any, integer: bool) -> int | float:
    """`value` as an int (integer=True: an int, a numpy integer or an integral float) or a finite float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if integer:
        if isinstance(value, numbers.Integral):
            return int(value)
        if float(value).is_integer():
            return int(value)
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return float(value)


def check(name: str, value: Any) -> Any:
    """The value of option `name`, checked and normalised (e.g. 64.0 -> 64); ValueError names what is wrong."""
    if name in ("remove_background", "keep_floaters", "video"):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return bool(value)
    if name == "mode":
        if value not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {value!r}")
        return value
    if name == "precision":
        if value not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {value!r}")
        return value
    if name == "formats":
        return _formats(value)
    if name in ("foreground_ratio", "source_distance", "threshold"):
        value = _number(name, value, integer=False)
        if name == "foreground_ratio" and not 0.1 <= value <= 1.0:
            raise ValueError(f"foreground_ratio must be in [0.1, 1], got {value:g}")
        if name != "foreground_ratio" and not value > 0:
            raise ValueError(f"{name} must be positive, got {value:g}")
        return value
    value = _number(name, value, integer=True)
    limit = LIMITS.get(name)
    if name == "mesh_resolution" and (value < 0 or value == 1):
        raise ValueError(f"mesh_resolution must be 0 (no mesh) or at least 2, got {value}")
    if name == "faces" and value != 0 and value < 100:
        raise ValueError(f"faces must be 0 (keep every triangle) or at least 100, got {value}")
    if name == "texture_size" and (value < 0 or value & (value - 1)):
        raise ValueError(f"texture_size must be a power of two (or 0: vertex colours), got {value}")
    if name in ("n_views", "fps") and value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    if name == "video_size" and (value < 2 or value % 2):
        raise ValueError(f"video_size must be even and at least 2 (H.264 yuv420p), got {value}")
    if limit is not None and value > limit:
        raise ValueError(f"{name} must be at most {limit:,}, got {value:,}")
    return value


def _formats(value: Any) -> tuple[str, ...]:
    """Mesh formats: a list or tuple of names, or one comma-separated string ("glb,ply")."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)) or not all(isinstance(f, str) for f in value):
        raise ValueError(f"formats must be a list of mesh formats ({', '.join(MESH_FORMATS)}) or one "
                         f"comma-separated string, got {value!r}")
    formats = tuple(dict.fromkeys(f.strip().lower().lstrip(".") for f in value if f.strip()))
    if unknown := [f for f in formats if f not in MESH_FORMATS]:
        raise ValueError(f"formats: unknown mesh format(s) {', '.join(map(repr, unknown))}; use "
                         f"{', '.join(MESH_FORMATS)}")
    return formats


# The options a model's settings fill in when a job leaves them unset (None): the same names on both sides.
MODEL_SETTINGS = ("foreground_ratio", "source_distance", "mesh_resolution", "threshold", "video_size")


@dataclass(frozen=True)
class JobOptions:
    """What one reconstruction job makes; the CLI, the app and the library all describe a job with it.

    None means "the model's own setting" (`LRM.infer_defaults`, the same names), filled in by `for_model`. Every value
    is checked at construction (`check`).
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
    n_views: int = N_VIEWS                  # its frames
    fps: int = FPS
    video_size: int | None = None           # its frame size (the model's render size)
    mode: Mode = "fast"                     # "reference": OpenLRM's exact, slow algorithms (lrm/fast.py says why)
    precision: Precision = "fp32"           # autocast for the planes (`LRM.forward_planes`)

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None or f.name not in MODEL_SETTINGS:
                object.__setattr__(self, f.name, check(f.name, value))

    def for_model(self, settings: InferDefaults) -> "JobOptions":
        """These options with every unset (None) value taken from a model's settings (`LRM.infer_defaults`)."""
        return replace(self, **{k: getattr(settings, k) for k in MODEL_SETTINGS if getattr(self, k) is None})
