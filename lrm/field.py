"""A prepared field: the one object the mesh, the video and the texture bake query for one plane set.

`ReferenceField` evaluates OpenLRM's decoder wherever the reference does; `FastField` (lrm/fast.py) evaluates it once
near the surface and caches it. Both answer the same three questions for planes [1, 3, C, H, W]: the density on the
G³ grid of [-1, 1]³ (for marching cubes), the colour at points, and pictures from render cameras.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .model import LRM, POINT_CHUNK

Progress = Callable[[int, int], None]  # progress(done, total)


def grid_points(resolution: int, idx: Tensor) -> Tensor:
    """Points [P, 3] at flat indices idx [P] of `meshgrid(linspace(-1, 1, G) x 3, indexing='ij')`."""
    axis = torch.linspace(-1, 1, resolution, device=idx.device)
    g2 = resolution * resolution
    return torch.stack([axis[idx // g2], axis[(idx // resolution) % resolution], axis[idx % resolution]], dim=-1)


def grid_coordinates(resolution: int, start: int, stop: int, device: torch.device | str = "cpu") -> Tensor:
    """Points [P, 3] of the flattened grid vertices start..stop (the reference's `forward_grid` order)."""
    return grid_points(resolution, torch.arange(start, stop, device=device))


def density_grid(model: LRM, planes: Tensor, resolution: int, chunk: int = POINT_CHUNK,
                 progress: Progress | None = None) -> Tensor:
    """Activated density on the G³ grid of [-1, 1]³ for planes [1, 3, C, H, W] -> [G, G, G], axes (x, y, z).

    Points are generated chunk by chunk, so memory stays bounded by `chunk` whatever the resolution.
    """
    total = resolution ** 3
    out = torch.empty(total, dtype=planes.dtype, device=planes.device)
    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        xyz = grid_coordinates(resolution, start, stop, planes.device)
        sigma, _ = model.query_points(planes, xyz[None], chunk=chunk)
        out[start:stop] = sigma[0, :, 0]
        if progress is not None:
            progress(stop, total)
    return out.view(resolution, resolution, resolution)


class Field:
    """The model's field for one plane set [1, 3, C, H, W]; subclasses say how the grid and the pictures are made."""

    def __init__(self, model: LRM, planes: Tensor):
        if planes.dim() != 5 or planes.shape[0] != 1:
            raise ValueError(f"a field takes one plane set [1, 3, C, H, W], got {tuple(planes.shape)}")
        self.model, self.planes = model, planes

    @property
    def infer_defaults(self):
        return self.model.infer_defaults

    def colors(self, xyz: Tensor) -> Tensor:
        """The decoder's colour at points xyz [P, 3] -> rgb [P, 3] in [0, 1] (exact in every field, as the
        reference's vertex colours)."""
        with torch.inference_mode():
            return self.model.query_points(self.planes, xyz.to(self.planes.device)[None])[1][0]

    def surface_colors(self, xyz: Tensor) -> Tensor:
        """Colours at points xyz [P, 3] on or near the surface -> rgb [P, 3], as fast as the field can give them (the
        texture bake's many texels): the exact decoder here; `FastField` looks them up in its cache."""
        return self.colors(xyz)

    def surface_grid(self, resolution: int, threshold: float, progress: Progress | None = None
                     ) -> tuple[Tensor, tuple[int, int, int]]:
        """The block of the activated-density G³ grid (axes x, y, z) that marching cubes needs for the level set
        `threshold` -> (block [g0, g1, g2], index of its first vertex in the full grid)."""
        raise NotImplementedError

    def render(self, cameras: Tensor, size: int, deterministic: bool = True, *, samples_per_ray: int | None = None,
               background: float = 1.0, generator: torch.Generator | None = None,
               progress: Progress | None = None) -> dict[str, Tensor]:
        """Pictures from render cameras [M, 25] at size x size -> rgb [M, 3, H, W], depth and weight [M, 1, H, W].

        The sampling is `LRM.render`'s: deterministic=True is RNG-free; False draws the reference's random numbers
        from `generator` in its order. `progress(done, total)` is called after each view.
        """
        raise NotImplementedError


class ReferenceField(Field):
    """OpenLRM's algorithms as they are: the decoder at every grid vertex and every ray sample (`LRM.render`)."""

    def surface_grid(self, resolution: int, threshold: float, progress: Progress | None = None
                     ) -> tuple[Tensor, tuple[int, int, int]]:
        with torch.inference_mode():
            return density_grid(self.model, self.planes, resolution, progress=progress), (0, 0, 0)

    def render(self, cameras: Tensor, size: int, deterministic: bool = True, *, samples_per_ray: int | None = None,
               background: float = 1.0, generator: torch.Generator | None = None,
               progress: Progress | None = None) -> dict[str, Tensor]:
        with torch.inference_mode():
            out = self.model.render(self.planes, cameras[None], size, deterministic, samples_per_ray=samples_per_ray,
                                    background=background, generator=generator, progress=progress)
        return {k: v[0] for k, v in out.items()}
