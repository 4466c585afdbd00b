"""The model configuration (exactly the checkpoint's constructor kwargs) and the inference defaults.

`LRMConfig` mirrors the 12 keyword arguments that OpenLRM v1.1 writes to `config.json` and v1.0 stores in
`model.pth['kwargs']['model']` (v1.0 has no `encoder_type`; it is always DINO there).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

# Constructor defaults of the reference (`ModelLRM.__init__` / `LRMGenerator.__init__`): a checkpoint may omit these.
_OPTIONAL = {
    "encoder_freeze": True,
    "encoder_type": "dino",
    "encoder_model_name": "facebook/dino-vitb16",
    "encoder_feat_dim": 768,
}


@dataclass(frozen=True)
class LRMConfig:
    camera_embed_dim: int
    rendering_samples_per_ray: int
    transformer_dim: int
    transformer_layers: int
    transformer_heads: int
    triplane_low_res: int
    triplane_high_res: int
    triplane_dim: int
    # Same order as the released config.json files.
    encoder_type: str = "dino"
    encoder_model_name: str = "facebook/dino-vitb16"
    encoder_feat_dim: int = 768
    encoder_freeze: bool = True
    # Extensions of this project (not in any OpenLRM release; their defaults leave released checkpoints unchanged and
    # they are written to config.json only when set).
    triplane_lift: bool = False  # add image features lifted onto the triplane tokens (lrm/lift.py)
    triplane_lift_rgb: bool = False  # add the input image's colours lifted onto the planes (lrm/lift.py)
    # raw density = density_scale * (decoder output) + density_shift. Training uses a scale > 1 to reach opaque
    # densities quickly; a calibrated pair k, 3.95 (1 - k) sharpens a trained field around the density-3.0 surface
    # (raw 3.95) without moving it (lrm/train/calibrate.py).
    density_scale: float = 1.0
    density_shift: float = 0.0

    @classmethod
    def from_dict(cls, kwargs: Mapping[str, Any]) -> "LRMConfig":
        """Build from checkpoint kwargs; unknown or missing keys raise `ValueError` naming them."""
        if not isinstance(kwargs, Mapping):
            raise ValueError(f"model config must be a JSON object / dict, got {type(kwargs).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        missing = sorted(names - set(kwargs) - set(_OPTIONAL))
        if unknown or missing:
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unknown:
                parts.append(f"unknown keys {unknown}")
            raise ValueError(
                "This is not an OpenLRM model config: " + "; ".join(parts)
                + ". Expected the constructor kwargs of an OpenLRM checkpoint (config.json of a v1.1 release or "
                "model.pth['kwargs']['model'] of v1.0)."
            )
        config = cls(**kwargs)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        """The v1.1 `config.json` content (same key order as the released files; extensions only when set)."""
        data = dataclasses.asdict(self)
        for name in EXTENSIONS:
            if data[name] == _EXTENSION_DEFAULTS[name]:
                del data[name]
        return data

    def validate(self) -> None:
        for name in ("camera_embed_dim", "rendering_samples_per_ray", "transformer_dim", "transformer_layers",
                     "transformer_heads", "triplane_low_res", "triplane_high_res", "triplane_dim", "encoder_feat_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"config.{name} must be a positive integer, got {value!r}")
        if self.transformer_dim % self.transformer_heads:
            raise ValueError(f"transformer_dim {self.transformer_dim} is not divisible by "
                             f"transformer_heads {self.transformer_heads}")
        if self.triplane_high_res != 2 * self.triplane_low_res:
            # The upsampler is a stride-2 transposed convolution: high_res is always twice low_res.
            raise ValueError(f"triplane_high_res ({self.triplane_high_res}) must be 2 x triplane_low_res "
                             f"({self.triplane_low_res})")
        if self.rendering_samples_per_ray < 4:
            raise ValueError("rendering_samples_per_ray must be at least 4 (half coarse, half importance)")
        for name in ("triplane_lift", "triplane_lift_rgb"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"config.{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.density_scale, (int, float)) or isinstance(self.density_scale, bool) \
                or not self.density_scale > 0:
            raise ValueError(f"config.density_scale must be a positive number, got {self.density_scale!r}")
        if not isinstance(self.density_shift, (int, float)) or isinstance(self.density_shift, bool) \
                or not math.isfinite(self.density_shift):
            raise ValueError(f"config.density_shift must be a finite number, got {self.density_shift!r}")
        if self.encoder_type.lower() not in ("dino", "dinov2"):
            raise ValueError(f"encoder_type must be 'dino' or 'dinov2', got {self.encoder_type!r}")


EXTENSIONS = ("triplane_lift", "triplane_lift_rgb", "density_scale", "density_shift")
_EXTENSION_DEFAULTS = {f.name: f.default for f in fields(LRMConfig) if f.name in EXTENSIONS}
_OPTIONAL.update(_EXTENSION_DEFAULTS)


@dataclass(frozen=True)
class InferDefaults:
    """A model's own settings: its input size, and the job options it fills in when a job leaves them unset (the
    same names as `lrm.JobOptions`). The defaults are the reference's; v1.0 checkpoints store some of them in
    `model.pth` (`kwargs['infer']`), v1.1 in OpenLRM's `configs/infer-*.yaml`, this project's models in infer.json."""
    source_size: int = 224          # the encoder's input side
    video_size: int = 192           # the rendered frames' side (OpenLRM's `render_size`)
    source_distance: float = 2.0    # the conditioning camera's distance (`source_cam_dist`)
    mesh_resolution: int = 384      # the marching-cubes grid (`mesh_size`)
    threshold: float = 3.0          # the density level of the surface (`mesh_thres`)
    # The recentring of the input (`lrm.preprocess`): the reference app's 0.85; this project's own models store the
    # ratio their training views had (lrm/train/data.py) in infer.json.
    foreground_ratio: float = 0.85


# A checkpoint's stored setting (v1.0's kwargs['infer'] and this project's infer.json use OpenLRM's names) -> its name
STORED_NAMES = {"source_size": "source_size", "render_size": "video_size", "source_cam_dist": "source_distance",
                "mesh_size": "mesh_resolution", "mesh_thres": "threshold", "foreground_ratio": "foreground_ratio"}

# OpenLRM's input / render sizes per released model size: v1.1.1 `configs/infer-{s,b,l}.yaml`; v1.0's model cards
# (its checkpoints also store them in kwargs['infer']). Other architectures get the smallest.
RELEASE_SIZES = {"1.1": {"small": (224, 192), "base": (336, 288), "large": (448, 384)},
                 "1.0": {"small": (224, 192), "base": (224, 192), "large": (224, 384)}}
# which released size an architecture is: v1.1 by transformer_dim, v1.0 by (transformer_dim, transformer_layers)
_SIZE_OF = {"1.1": {512: "small", 768: "base", 1024: "large"},
            "1.0": {(768, 12): "small", (1024, 12): "base", (1024, 16): "large"}}


def released_defaults(release: str, size: str | None) -> InferDefaults:
    """The reference's inference settings for a released model size ("small" / "base" / "large"; None: other)."""
    source, render = RELEASE_SIZES.get(release, {}).get(size, (InferDefaults.source_size, InferDefaults.video_size))
    return InferDefaults(source_size=source, video_size=render)


def infer_defaults_for(config: LRMConfig, stored: Mapping[str, Any] | None = None,
                       release: str = "1.1") -> InferDefaults:
    """The reference's inference settings for `config`, overridden by what the checkpoint stores (`stored`: v1.0's
    kwargs['infer'] or this project's infer.json, in OpenLRM's names)."""
    key = (config.transformer_dim, config.transformer_layers) if release == "1.0" else config.transformer_dim
    values = dataclasses.asdict(released_defaults(release, _SIZE_OF.get(release, {}).get(key)))
    # (v1.0 also stores `render_views` / `render_fps`, the reference's offline orbit; the video's frames and rate are
    # job options here, `lrm.JobOptions`)
    for stored_name, name in STORED_NAMES.items():
        if stored and stored.get(stored_name) is not None:
            values[name] = type(getattr(InferDefaults, name))(stored[stored_name])
    return InferDefaults(**values)
