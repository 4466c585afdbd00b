"""Light assets from the dense marching-cubes mesh: floaters removed, decimated, UV-unwrapped, texture baked.

Each step works alone; `make_asset` runs them in order. The texture is baked by asking the field for its colour at the
3-D point of every texel (`Field.surface_colors`), so it is as sharp as the field itself, not interpolated between the
vertices of the decimated mesh; no OpenGL, no CUDA extension, no rendering from views. Meshes stay in the triplane's
frame (z up); `lrm.export_mesh` turns GLB / OBJ to y up.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from PIL import Image
from torch import Tensor

from .field import Field
from .mesh import vertex_colors
from .options import FACES, TEXTURE_SIZE, check

# Pieces whose surface is below this share of the largest piece's are floaters. Measured: the separate parts of 60
# held-out procedural unions are 37-54 % of their largest part (ground truth at 128³); marching cubes' own specks are
# below 1e-4, and the demo model's extra pieces on held-out objects are single zero-area triangles. Released models'
# blobs of fog sit in between; 1 % leaves a factor of ~40 below real parts.
FLOATER_SHARE = 0.01
# xatlas's chart search grows faster than linearly. Measured on 40k-face meshes of the examples (embedded model): one
# piece 8.6 s; pieces of 1,000 faces 2.2-3.2 CPU-s, of 250 faces 1.3-1.6 CPU-s with the same atlas utilisation (~0.74)
# and texture PSNR, ~10 % more seam vertices (GLB +8 %).
PIECE_FACES = 250
TEXTURE_PADDING = 4  # texels the bake spreads into the empty space around each chart (mip-mapped views read there)


def remove_floaters(mesh: trimesh.Trimesh, min_share: float = FLOATER_SHARE) -> trimesh.Trimesh:
    """The mesh without the connected pieces whose area is below `min_share` of the largest piece's."""
    pieces = trimesh.graph.connected_components(mesh.face_adjacency, nodes=np.arange(len(mesh.faces)))
    if len(pieces) <= 1:
        return mesh
    areas = np.array([mesh.area_faces[p].sum() for p in pieces])
    keep = np.zeros(len(mesh.faces), bool)
    for piece, area in zip(pieces, areas):
        keep[piece] = area >= min_share * areas.max()
    out = mesh.copy()
    out.update_faces(keep)
    out.remove_unreferenced_vertices()
    return out


def decimate(mesh: trimesh.Trimesh, faces: int) -> trimesh.Trimesh:
    """The mesh simplified to about `faces` triangles by quadric error (fast-simplification); unchanged when it has no
    more than that. Vertex colours are not carried over (`make_asset` asks the field for them)."""
    import fast_simplification

    if len(mesh.faces) <= faces:
        return mesh
    vertices, triangles = fast_simplification.simplify(np.asarray(mesh.vertices, np.float32),
                                                       np.asarray(mesh.faces, np.int64),
                                                       target_reduction=1 - faces / len(mesh.faces))
    return trimesh.Trimesh(vertices=vertices, faces=triangles, process=False)


def _morton(points: np.ndarray) -> np.ndarray:
    """Z-order codes [P] of points [P, 3] quantised to 10 bits per axis: sorting by them keeps neighbours together."""
    span = points.max(0) - points.min(0)
    q = ((points - points.min(0)) / np.where(span > 0, span, 1) * 1023).astype(np.int64)
    code = np.zeros(len(points), np.int64)
    for bit in range(10):
        for axis in range(3):
            code |= ((q[:, axis] >> bit) & 1) << (3 * bit + axis)
    return code


def unwrap(mesh: trimesh.Trimesh, piece_faces: int = PIECE_FACES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """UV charts by xatlas -> vertices [V', 3] (seam vertices doubled), faces [F, 3], uv [V', 2] in [0, 1] (v up).

    The mesh is cut into spatially compact pieces of about `piece_faces` triangles (faces sorted along a Z-order
    curve), which xatlas charts one by one and packs into one atlas: its chart search grows faster than the face
    count (see PIECE_FACES; charts do not cross pieces).
    """
    import xatlas

    vertices, faces = np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int64)
    order = np.argsort(_morton(vertices[faces].mean(1)), kind="stable")
    atlas = xatlas.Atlas()
    used = []
    for piece in np.array_split(order, max(1, round(len(faces) / piece_faces))):
        ids, local = np.unique(faces[piece], return_inverse=True)
        atlas.add_mesh(vertices[ids], local.reshape(-1, 3).astype(np.uint32))
        used.append(ids)
    pack = xatlas.PackOptions()
    pack.padding, pack.blockAlign = 2, True
    atlas.generate(xatlas.ChartOptions(), pack)
    out_v, out_f, out_uv, offset = [], [], [], 0
    for i, ids in enumerate(used):
        vmapping, indices, uv = atlas[i]
        out_v.append(vertices[ids[vmapping]])
        out_f.append(indices.astype(np.int64) + offset)
        out_uv.append(uv)
        offset += len(vmapping)
    return np.concatenate(out_v), np.concatenate(out_f), np.concatenate(out_uv).astype(np.float32)


def rasterize(uv: Tensor, faces: Tensor, size: int, chunk: int = 2 ** 22) -> tuple[Tensor, Tensor, Tensor]:
    """The texels whose centre lies in a triangle of the UV layout -> (texel [T] = row * size + column, with row 0 at
    v = 0; face [T]; barycentric weights [T, 3]). uv [V, 2] in [0, 1], faces [F, 3]. Vectorised (CPU or GPU): every
    texel of each triangle's bounding box is a candidate, `chunk` candidates at a time."""
    p = uv[faces] * size - 0.5  # [F, 3, 2]: texel (row r, column c) is centred at (c, r)
    lo = p.amin(1).ceil().clamp(0, size - 1).long()
    hi = p.amax(1).floor().clamp(0, size - 1).long()
    extent = (hi - lo + 1).clamp_min(0)  # [F, 2]
    counts = extent[:, 0] * extent[:, 1]
    texels, owners, weights = [], [], []
    ends = torch.cumsum(counts, 0)
    start_face = 0
    while start_face < len(faces):  # faces in groups of about `chunk` candidates
        stop_face = int(torch.searchsorted(ends, ends[start_face] - counts[start_face] + chunk, right=True))
        stop_face = max(stop_face, start_face + 1)
        ids = torch.arange(start_face, stop_face, device=uv.device)
        face = torch.repeat_interleave(ids, counts[ids])
        k = torch.arange(len(face), device=uv.device) - (torch.cumsum(counts[ids], 0) - counts[ids])[face - start_face]
        col = lo[face, 0] + k % extent[face, 0]
        row = lo[face, 1] + torch.div(k, extent[face, 0], rounding_mode="floor")
        a, b, c = p[face, 0], p[face, 1], p[face, 2]  # [K, 2] each
        q = torch.stack([col, row], -1).to(p.dtype)
        e0, e1, e2 = b - a, c - a, q - a
        det = e0[:, 0] * e1[:, 1] - e1[:, 0] * e0[:, 1]
        l1 = (e2[:, 0] * e1[:, 1] - e1[:, 0] * e2[:, 1]) / det
        l2 = (e0[:, 0] * e2[:, 1] - e2[:, 0] * e0[:, 1]) / det
        bary = torch.stack([1 - l1 - l2, l1, l2], -1)
        inside = (bary >= -1e-6).all(-1) & (det != 0)
        texels.append((row * size + col)[inside])
        owners.append(face[inside])
        weights.append(bary[inside])
        start_face = stop_face
    texel, face, bary = torch.cat(texels), torch.cat(owners), torch.cat(weights)
    # a texel on an edge shared by two triangles: keep one (the later candidate, deterministically)
    candidate = torch.arange(len(texel), device=uv.device)
    keep = torch.full((size * size,), -1, dtype=torch.long, device=uv.device).scatter_reduce(
        0, texel, candidate, "amax")
    chosen = keep[keep >= 0]
    return texel[chosen], face[chosen], bary[chosen]


def dilate(image: Tensor, covered: Tensor, steps: int = TEXTURE_PADDING) -> Tensor:
    """Spread a texture [3, H, W] from its covered texels [H, W] (bool) into the empty ones, `steps` texels out (each
    new texel the mean of its covered neighbours); what stays empty gets the mean colour, so mip levels that average
    across chart borders see no dark seams."""
    mean = image[:, covered].mean(1)[:, None, None] if covered.any() else torch.zeros_like(image[:, :1, :1])
    for _ in range(steps):
        mask = covered.to(image.dtype)
        # 3 x 3 sums of the covered colours and of the covered count: a separable box sum of shifted slices (2.5x
        # faster than avg_pool2d on a 1024² CPU texture, and than conv2d)
        padded = F.pad(torch.cat([image * mask, mask[None]]), (1, 1, 1, 1))
        rows = padded[:, :, :-2] + padded[:, :, 1:-1] + padded[:, :, 2:]
        sums = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
        grow = (sums[3] > 0) & ~covered
        image = torch.where(grow, sums[:3] / sums[3].clamp_min(1), image)
        covered = covered | grow
    return torch.where(covered, image, mean)


def bake_texture(field: Field, vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray, size: int,
                 padding: int = TEXTURE_PADDING) -> Image.Image:
    """The field's colour (`Field.surface_colors`) at the 3-D point of every texel of the UV layout -> an RGB
    `size` x `size` PIL image (the model's sRGB colours, as glTF wants them; row 0 is v = 1, as image files and
    trimesh's UVs have it)."""
    device = field.planes.device
    f = torch.as_tensor(faces, device=device)
    texel, face, bary = rasterize(torch.as_tensor(uv, device=device), f, size)
    corners = torch.as_tensor(vertices, dtype=torch.float32, device=device)[f[face]]  # [T, 3, 3]
    points = (bary[..., None] * corners).sum(1)
    image = torch.zeros(3, size * size, device=device)
    covered = torch.zeros(size * size, dtype=torch.bool, device=device)
    if len(texel):
        image[:, texel] = field.surface_colors(points).float().T.clamp(0, 1)
        covered[texel] = True
    image = dilate(image.view(3, size, size), covered.view(size, size), padding)
    pixels = (image.flip(1).permute(1, 2, 0) * 255).round().to(torch.uint8).cpu().numpy()  # rows: v = 1 first
    return Image.fromarray(pixels, "RGB")


def texture_colors(asset: trimesh.Trimesh, points: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """A textured asset's texture at points [P, 3] on its faces [P] (e.g. from `trimesh.sample.sample_surface`) ->
    rgb [P, 3] in [0, 1], as a viewer shows it (the texel under the point's interpolated UV)."""
    bary = trimesh.triangles.points_to_barycentric(asset.triangles[faces], points)
    uv = (asset.visual.uv[asset.faces[faces]] * bary[..., None]).sum(1)
    return trimesh.visual.color.uv_to_color(uv, asset.visual.material.baseColorTexture)[:, :3] / 255.0


def make_asset(field: Field, mesh: trimesh.Trimesh, faces: int = FACES, texture_size: int = TEXTURE_SIZE,
               keep_floaters: bool = False, name: str = "texture") -> trimesh.Trimesh:
    """The dense marching-cubes mesh -> a light asset: floaters removed (unless `keep_floaters`), decimated to about
    `faces` triangles (0: all kept) and either UV-textured with a `texture_size`² texture baked from the field (a PBR
    material: metallic 0, roughness 1; `name` names it) or, with texture_size 0, vertex-coloured from the field."""
    faces, texture_size = check("faces", faces), check("texture_size", texture_size)
    out = mesh if keep_floaters else remove_floaters(mesh)
    if faces:
        out = decimate(out, faces)
    if not texture_size:
        if out is mesh:
            return mesh
        out = out.copy()
        out.visual = trimesh.visual.ColorVisuals(out, vertex_colors=vertex_colors(field, out.vertices))
        return out
    vertices, triangles, uv = unwrap(out)
    texture = bake_texture(field, vertices, triangles, uv, texture_size)
    material = trimesh.visual.material.PBRMaterial(name=name, baseColorTexture=texture, metallicFactor=0.0,
                                                   roughnessFactor=1.0)
    return trimesh.Trimesh(vertices=vertices, faces=triangles, process=False,
                           visual=trimesh.visual.TextureVisuals(uv=uv, material=material))
