"""Density grid -> marching cubes -> vertex-coloured mesh, as the reference; export to GLB / OBJ / PLY.

The mesh lives in the triplane's world frame (z up, the input view looking along +y), like the reference's PLY.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from torch import Tensor

from .model import POINT_CHUNK, LRM


def grid_points(resolution: int, idx: Tensor) -> Tensor:
    """Points [P, 3] at flat indices idx [P] of `meshgrid(linspace(-1, 1, G) x 3, indexing='ij')`."""
    axis = torch.linspace(-1, 1, resolution, device=idx.device)
    g2 = resolution * resolution
    return torch.stack([axis[idx // g2], axis[(idx // resolution) % resolution], axis[idx % resolution]], dim=-1)


def grid_coordinates(resolution: int, start: int, stop: int, device: torch.device | str = "cpu") -> Tensor:
    """Points [P, 3] of the flattened grid vertices start..stop (the reference's `forward_grid` order)."""
    return grid_points(resolution, torch.arange(start, stop, device=device))


def density_grid(model: LRM, planes: Tensor, resolution: int, chunk: int = POINT_CHUNK,
                 progress: Callable[[int, int], None] | None = None) -> Tensor:
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


def vertex_colors(model: LRM, planes: Tensor, vertices: np.ndarray) -> np.ndarray:
    """uint8 RGBA colours [V, 4] of the field at vertices [V, 3]: rgb * 255 truncated, like the reference."""
    _, rgb = model.query_points(planes, torch.as_tensor(vertices, dtype=torch.float32, device=planes.device)[None])
    rgb = (rgb[0].float().cpu().numpy() * 255).astype(np.uint8)
    return np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1)


def extract_mesh(model: LRM, planes: Tensor, resolution: int = 384, threshold: float = 3.0,
                 progress: Callable[[int, int], None] | None = None, *,
                 mode: Literal["fast", "reference"] = "fast", fast=None):
    """Mesh of the density level set `threshold` of planes [1, 3, C, H, W] -> `trimesh.Trimesh` with vertex colours.

    The reference's `infer_mesh`: activated density on a G³ grid over [-1, 1]³, PyMCubes marching cubes, vertices
    scaled to [-1, 1] (triplane world frame, z up), colours from the field at the vertices.
    mode="reference" evaluates the whole grid as OpenLRM; mode="fast" (default) only near the surface of a coarse
    pass (lrm/fast.py; `fast` may pass a prepared `FastField`).
    """
    import mcubes
    import trimesh

    if resolution < 2:
        raise ValueError(f"mesh resolution must be at least 2, got {resolution}")
    if mode not in ("fast", "reference"):
        raise ValueError(f"mode must be 'fast' or 'reference', got {mode!r}")
    with torch.inference_mode():
        if mode == "fast":
            from .fast import FastField
            fast = fast or FastField(model, planes)
            grid = fast.cache.density(resolution)
            # marching cubes only over the bounding box of the surface (plus a vertex): same triangles, less scanning
            above = grid >= threshold
            lo = np.zeros(3, dtype=np.int64)
            if above.any():
                spans = [torch.nonzero(above.any(dim=tuple(d for d in range(3) if d != axis))).squeeze(1)
                         for axis in range(3)]
                lo = np.array([max(int(a[0]) - 1, 0) for a in spans])
                hi = [min(int(a[-1]) + 2, resolution) for a in spans]
                grid = grid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            vertices, faces = mcubes.marching_cubes(np.ascontiguousarray(grid.cpu().numpy()), threshold)
            vertices = vertices + lo
            if progress is not None:
                progress(1, 1)
        else:
            grid = density_grid(model, planes, resolution, progress=progress).float().cpu().numpy()
            vertices, faces = mcubes.marching_cubes(grid, threshold)
        vertices = vertices / (resolution - 1) * 2 - 1
        colors = vertex_colors(model, planes, vertices)
    return trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=colors)


# Triplane world (z up, the input camera on -y looking along +y) -> glTF (y up, the viewer on +z looking along -z):
# x stays x, z becomes y, -y becomes z. A proper rotation (-90 degrees about x), so faces keep their outward winding.
WORLD_TO_GLTF = np.array([[1, 0, 0, 0],
                          [0, 0, 1, 0],
                          [0, -1, 0, 0],
                          [0, 0, 0, 1]], dtype=np.float64)

MESH_FORMATS = ("glb", "obj", "ply")


def export_mesh(mesh, path) -> Path:
    """Write a mesh as .glb, .obj or .ply (by suffix), with vertex colours.

    GLB and OBJ are rotated into the glTF convention (y up, the input view facing the viewer on +z) so they open the
    right way up in any viewer; PLY stays in the reference's frame (z up), as OpenLRM writes it. Marching cubes on a
    density that is higher inside gives outward-facing triangles; the rotation keeps them so.
    """
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in MESH_FORMATS:
        raise ValueError(f"unsupported mesh format {path.suffix!r}; use one of {', '.join(MESH_FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "ply":
        mesh.export(path)  # binary little-endian, float xyz + uchar RGBA, like the reference
    else:
        rotated = mesh.copy()
        rotated.apply_transform(WORLD_TO_GLTF)
        rotated.export(path)
    return path
