"""Density grid -> marching cubes -> vertex-coloured mesh, as the reference; export to GLB / OBJ / PLY.

The mesh lives in the triplane's world frame (z up, the input view looking along +y), like the reference's PLY.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from .config import InferDefaults
from .field import Field, Progress
from .options import MESH_FORMATS, check


class EmptyMeshError(ValueError):
    """No surface: the field's density stays below the threshold everywhere on the grid."""


def vertex_colors(field: Field, vertices: np.ndarray) -> np.ndarray:
    """uint8 RGBA colours [V, 4] of the field at vertices [V, 3]: rgb * 255 truncated, like the reference."""
    rgb = field.colors(torch.as_tensor(vertices, dtype=torch.float32))
    rgb = (rgb.float().cpu().numpy() * 255).astype(np.uint8)
    return np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1)


def extract_mesh(field: Field, resolution: int = InferDefaults.mesh_resolution,
                 threshold: float = InferDefaults.threshold, progress: Progress | None = None):
    """Mesh of the density level set `threshold` of a field (`lrm.FastField` or `lrm.ReferenceField`) ->
    `trimesh.Trimesh` with vertex colours. Raises `EmptyMeshError` (a ValueError) when there is no surface.

    The reference's `infer_mesh`: activated density on a G³ grid over [-1, 1]³ (`field.surface_grid`), PyMCubes
    marching cubes, vertices scaled to [-1, 1] (triplane world frame, z up), colours from the field at the vertices.
    """
    import mcubes
    import trimesh

    resolution, threshold = check("mesh_resolution", resolution), check("threshold", threshold)
    if resolution < 2:
        raise ValueError(f"mesh_resolution must be at least 2 to make a mesh, got {resolution}")
    grid, lo = field.surface_grid(resolution, threshold, progress)
    vertices, faces = mcubes.marching_cubes(np.ascontiguousarray(grid.float().cpu().numpy()), threshold)
    if len(faces) == 0:
        peak = float(grid.max()) if grid.numel() else 0.0
        raise EmptyMeshError(f"no surface: nothing is above the density threshold {threshold:g} (the highest density "
                             f"on the {resolution}³ grid is {peak:.3g}); lower the threshold")
    if any(lo):
        vertices = vertices + np.asarray(lo)
    vertices = vertices / (resolution - 1) * 2 - 1
    return trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=vertex_colors(field, vertices))


# Triplane world (z up, the input camera on -y looking along +y) -> glTF (y up, the viewer on +z looking along -z):
# x stays x, z becomes y, -y becomes z. A proper rotation (-90 degrees about x), so faces keep their outward winding.
WORLD_TO_GLTF = np.array([[1, 0, 0, 0],
                          [0, 0, 1, 0],
                          [0, -1, 0, 0],
                          [0, 0, 0, 1]], dtype=np.float64)

def srgb_to_linear(colors: np.ndarray) -> np.ndarray:
    """uint8 sRGB(A) colours [V, 3 | 4] -> uint8 linear ones (alpha kept): glTF's COLOR_0 is linear, and the model's
    colours are image (sRGB) colours, which viewers would otherwise show lighter and washed out."""
    c = colors[:, :3].astype(np.float64) / 255
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)  # the sRGB transfer function (IEC 61966)
    return np.concatenate([(linear * 255).round().astype(np.uint8), colors[:, 3:]], 1)


def obj_companions(stem: str) -> dict[str, str]:
    """The files a textured `<stem>.obj` comes with: "mtl" and "texture" -> file name."""
    return {"mtl": f"{stem}.mtl", "texture": f"{stem}_texture.png"}


def _write_textured_obj(mesh, path: Path) -> None:
    """OBJ + its MTL and texture PNG beside it (`obj_companions`). The material is written here, not by trimesh, whose
    MTL scales the texture by Kd 0.4 (darker in viewers that multiply them) and adds ambient and specular terms."""
    from trimesh.exchange.obj import export_obj

    names = obj_companions(path.stem)
    text, _ = export_obj(mesh, include_normals=False, include_texture=True, return_texture=True, mtl_name=names["mtl"])
    material = re.search(r"^usemtl (.+)$", text, re.M).group(1)
    mesh.visual.material.baseColorTexture.save(path.with_name(names["texture"]))
    path.with_name(names["mtl"]).write_text(
        f"newmtl {material}\nKa 0 0 0\nKd 1 1 1\nKs 0 0 0\nNs 1\nd 1\nillum 1\nmap_Kd {names['texture']}\n")
    path.write_text(text)


def bundle_obj(path: str | Path) -> Path:
    """A textured OBJ with its MTL and texture as one download: `<stem>_obj.zip` beside it (made once); a lone OBJ
    would lose its texture. An OBJ without them is returned as it is."""
    path = Path(path)
    companions = [path.with_name(name) for name in obj_companions(path.stem).values()]
    if not all(p.is_file() for p in companions):
        return path
    bundle = path.with_name(f"{path.stem}_obj.zip")
    if not bundle.exists():
        with zipfile.ZipFile(bundle, "w") as z:
            for p in (path, *companions):
                z.write(p, p.name)
    return bundle


def export_mesh(mesh, path) -> Path:
    """Write a mesh as .glb, .obj or .ply (by suffix), with its vertex colours or its texture.

    GLB and OBJ are rotated into the glTF convention (y up, the input view facing the viewer on +z) so they open the
    right way up in any viewer; PLY stays in the reference's frame (z up), as OpenLRM writes it. Marching cubes on a
    density that is higher inside gives outward-facing triangles; the rotation keeps them so. A GLB's vertex colours
    are written linear (`srgb_to_linear`); a texture stays sRGB, as glTF's base colour is. A textured OBJ also writes
    its MTL and texture PNG beside it (`obj_companions`).
    """
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in MESH_FORMATS:
        raise ValueError(f"unsupported mesh format {path.suffix!r}; use one of {', '.join(MESH_FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "ply":
        mesh.export(path)  # binary little-endian, float xyz + uchar RGBA, like the reference
        return path
    rotated = mesh.copy()
    rotated.apply_transform(WORLD_TO_GLTF)
    if fmt == "glb" and rotated.visual.kind == "vertex":
        rotated.visual.vertex_colors = srgb_to_linear(np.asarray(rotated.visual.vertex_colors))
    if fmt == "obj" and rotated.visual.kind == "texture":
        _write_textured_obj(rotated, path)
    else:
        rotated.export(path)
    return path
