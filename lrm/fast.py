"""The fast path: the reference's algorithms on a cached copy of the field, evaluated only where it matters.

One coarse pass (the field's raw density on a G³ grid, 64 by default) marks the occupied part of [-1, 1]³. The field
(raw density and colour) is then evaluated exactly, once, at the vertices of a finer grid (G twice the plane
resolution: 128 for the released models) in and around the occupied cells; elsewhere the coarse pass stands in.
That cache replaces the decoder:
- video: the reference's sampling is kept (48 stratified + 48 importance samples per ray, the same positions, the
  same compositing), but a sample is a trilinear lookup of the density in the cache instead of a decoder pass,
  colours are looked up only for the samples that carry weight, and rays whose optical depth is surely negligible
  (an upper bound splatted from the occupied cells) are background without any lookup;
- mesh: marching cubes runs on the cache's density upsampled to the mesh resolution, over the surface's bounding
  box only; vertex colours come from the field itself, as in the reference.
The decoder is smooth at the scale of the plane texels, so at two cache vertices per texel the pictures match the
reference's to ~50 dB PSNR and the mesh to a fraction of a voxel on realistic fields (bench.py measures both).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import raymarch
from .camera import conditioning_cameras, get_rays, project
from .field import Field, Progress, grid_points
from .model import LRM
from .renderer import (OUT_OF_BOX_SIGMA, RayBundle, compositing_weights, density_activation, importance_depths,
                       random_draws, ray_box_limits, stand_in_limits, stratified_depths)

EMPTY_DENSITY = 1e-3  # a cell whose (dilated) density stays below this is empty: optical depth < 0.004 over the box
COARSE = 64
POINT_CHUNK = 2 ** 18
HIT_DEPTH = 1e-3     # rays whose optical depth is surely below this are background (colour error < 1e-3)
COLOR_WEIGHT = 1e-5  # samples whose share of a pixel's colour is below this are not looked up
RAY_CHUNK = 2 ** 14


@dataclass
class Occupancy:
    """Coarse cells [G-1]³ that may hold density: `core`, the max of their 8 corners above EMPTY_DENSITY, and
    `occupied`, the core dilated by one cell; `cell_max` keeps that max."""
    cell_max: Tensor  # [G-1, G-1, G-1], axes (x, y, z)
    core: Tensor      # bool [G-1, G-1, G-1]
    occupied: Tensor  # bool [G-1, G-1, G-1]

    @classmethod
    def from_grid(cls, grid: Tensor) -> "Occupancy":
        cell_max = F.max_pool3d(grid[None, None].float(), 2, 1)  # [1, 1, G-1, G-1, G-1]
        core = cell_max > EMPTY_DENSITY
        return cls(cell_max[0, 0], core[0, 0], F.max_pool3d(core.float(), 3, 1, padding=1)[0, 0] > 0)

    def optical_cells(self) -> tuple[Tensor, Tensor, float]:
        """Core cells: centres [P, 3], an upper bound of the optical depth of a straight path through each [P]
        (max density x diagonal), and a cell's bounding radius."""
        ijk = torch.nonzero(self.core)
        size = 2 / self.cells
        depth = self.cell_max[self.core] * (3 ** 0.5 * size)
        return -1 + (ijk.float() + 0.5) * size, depth, 3 ** 0.5 / 2 * size

    @property
    def cells(self) -> int:
        return self.occupied.shape[0]

    def vertices_near(self, resolution: int) -> Tensor:
        """Vertices of the G³ grid [G, G, G] (axes x, y, z) whose coarse cell or a neighbour of it is occupied.

        Every cache cell that overlaps an occupied coarse cell has all 8 corners in such cells, so trilinear lookups
        anywhere in occupied space use exact values only.
        """
        near = F.max_pool3d(self.occupied[None, None].float(), 3, 1, padding=1)[0, 0] > 0
        axis = torch.linspace(-1, 1, resolution, device=near.device)
        cell = ((axis + 1) * (self.cells / 2)).long().clamp(0, self.cells - 1)
        return near.index_select(0, cell).index_select(1, cell).index_select(2, cell)


def field_at_vertices(model, planes: Tensor, resolution: int, idx: Tensor, chunk: int = POINT_CHUNK) -> Tensor:
    """The decoder at the vertices idx [P] of the G³ grid (flat, axes x, y, z) -> raw density and rgb [P, 4]."""
    out = planes.new_empty(len(idx), 4, dtype=torch.float32)
    for start in range(0, len(idx), chunk):
        part = idx[start:start + chunk]
        raw, rgb = model.synthesizer(planes, grid_points(resolution, part)[None].to(planes))
        out[start:start + len(part)] = torch.cat([raw[0], rgb[0]], -1).float()
    return out


class FieldCache:
    """Raw density and colour on a G³ grid of [-1, 1]³, looked up trilinearly.

    Volumes [1, 1 | 3, G, G, G] with axes (z, y, x), as grid_sample indexes them; density and colour apart, because
    the 3-D CPU lookup costs about 20 ns per channel and most samples need the density only.
    """

    def __init__(self, density_volume: Tensor, color_volume: Tensor):
        self.density_volume, self.color_volume = density_volume, color_volume
        self._arrays = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The volumes as numpy arrays [G, G, G], [3, G, G, G] (axes z, y, x) for the compiled renderer (CPU)."""
        if self._arrays is None:
            self._arrays = self.density_volume[0, 0].numpy(), self.color_volume[0].numpy()
        return self._arrays

    @property
    def resolution(self) -> int:
        return self.density_volume.shape[-1]

    @classmethod
    def build(cls, model, planes: Tensor, coarse_raw: Tensor, occupancy: Occupancy, resolution: int,
              chunk: int = POINT_CHUNK) -> "FieldCache":
        """Exact field at the vertices near occupied cells; elsewhere the coarse raw density [G, G, G] upsampled
        (tiny densities, but the renderer averages the raw density of neighbouring samples before the activation, so
        an empty sample next to a dense one needs a realistic value, not -inf) and colour 0."""
        table = planes.new_zeros(resolution ** 3, 4, dtype=torch.float32)
        table[:, 0] = F.interpolate(coarse_raw[None, None].float(), size=(resolution,) * 3, mode="trilinear",
                                    align_corners=True).reshape(-1)
        idx = torch.nonzero(occupancy.vertices_near(resolution).reshape(-1)).squeeze(1)
        table[idx] = field_at_vertices(model, planes, resolution, idx, chunk)
        volume = table.view(resolution, resolution, resolution, 4).permute(3, 2, 1, 0)  # [4, z, y, x]
        return cls(volume[:1].contiguous().unsqueeze(0), volume[1:].contiguous().unsqueeze(0))

    @staticmethod
    def lookup(volume: Tensor, xyz: Tensor) -> Tensor:
        """Trilinear values of volume [1, C, G, G, G] at points [P, 3] -> [P, C]."""
        p = xyz.shape[0]
        if p % 2:
            xyz = torch.cat([xyz, xyz[:1]])
        # grid_sample's 3-D CPU kernel runs one thread per batch item: two halves keep both cores busy
        out = F.grid_sample(volume.expand(2, -1, -1, -1, -1), xyz.view(2, -1, 1, 1, 3).to(volume.dtype),
                            mode="bilinear", padding_mode="border", align_corners=True)  # [2, C, P / 2, 1, 1]
        return out.view(2, volume.shape[1], -1).transpose(1, 2).reshape(-1, volume.shape[1])[:p]

    def __call__(self, planes, xyz: Tensor) -> tuple[Tensor, Tensor]:
        """Like `TriplaneField`: xyz [1, P, 3] -> raw density [1, P, 1], rgb [1, P, 3] (`planes` is ignored)."""
        return self.lookup(self.density_volume, xyz[0])[None], self.lookup(self.color_volume, xyz[0])[None]

    def density(self, resolution: int) -> Tensor:
        """Activated density on the G³ mesh grid [G, G, G] (axes x, y, z), trilinear from the cache."""
        raw = self.density_volume
        if resolution != self.resolution:
            raw = F.interpolate(raw, size=(resolution,) * 3, mode="trilinear", align_corners=True)
        return density_activation(raw[0, 0].permute(2, 1, 0))


class FastField(Field):
    """The field of one plane set [1, 3, C, H, W] cached near its surface: the coarse occupancy and the cache, made
    once and shared by the mesh, the video and the texture bake. `resolution`: the cache's grid (default: two
    vertices per plane texel)."""

    def __init__(self, model: LRM, planes: Tensor, coarse: int = COARSE, resolution: int | None = None,
                 kernel: bool = True):
        super().__init__(model, planes)
        self.kernel = kernel  # render with the compiled per-ray loop where it runs (CPU, numba); False: tensors
        with torch.inference_mode():
            everywhere = torch.arange(coarse ** 3, device=planes.device)
            raw = field_at_vertices(model, planes, coarse, everywhere)[:, 0].view(coarse, coarse, coarse)
            self.occupancy = Occupancy.from_grid(density_activation(raw))  # axes (x, y, z)
            resolution = resolution or max(2 * planes.shape[-1], coarse)
            self.cache = FieldCache.build(model, planes, raw, self.occupancy, resolution)
            self.splat_cells = self.occupancy.optical_cells()  # for the hit mask of every view

    def surface_colors(self, xyz: Tensor) -> Tensor:
        """Trilinear colours [P, 3] from the cache, exact at its vertices near the surface (some 20x cheaper than the
        decoder; ~50 dB from the exact colours on the demo model's surfaces)."""
        with torch.inference_mode():
            return self.cache.lookup(self.cache.color_volume, xyz.to(self.planes.device))

    def surface_grid(self, resolution: int, threshold: float, progress: Progress | None = None
                     ) -> tuple[Tensor, tuple[int, int, int]]:
        """The cache's density upsampled to the G³ grid, cropped to the bounding box of the vertices at or above
        `threshold` plus one vertex (marching cubes finds the same triangles in it, scanning less)."""
        with torch.inference_mode():
            grid = self.cache.density(resolution)
            above = grid >= threshold
            lo = (0, 0, 0)
            if above.any():
                spans = [torch.nonzero(above.any(dim=tuple(d for d in range(3) if d != axis))).squeeze(1)
                         for axis in range(3)]
                lo = tuple(max(int(a[0]) - 1, 0) for a in spans)
                hi = [min(int(a[-1]) + 2, resolution) for a in spans]
                grid = grid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        if progress is not None:
            progress(1, 1)
        return grid, lo

    def render(self, cameras: Tensor, size: int, deterministic: bool = True, *, samples_per_ray: int | None = None,
               background: float = 1.0, generator: torch.Generator | None = None,
               progress: Progress | None = None) -> dict[str, Tensor]:
        samples = samples_per_ray or self.model.config.rendering_samples_per_ray
        n_coarse, n_fine = samples // 2, samples // 2
        m, device = cameras.shape[0], self.planes.device
        cameras = cameras.to(device, torch.float32)
        rgb_out = torch.empty(m, 3, size * size, dtype=self.planes.dtype, device=device)
        depth_out = torch.empty(m, 1, size * size, dtype=self.planes.dtype, device=device)
        weight_out = torch.empty_like(depth_out)
        with torch.inference_mode():
            origins, dirs = get_rays(cameras, size, exact=False)
            for j in range(m):
                jitter, u = (None, None) if deterministic else random_draws(size * size, n_coarse, n_fine, generator,
                                                                            device)
                rgb, depth, weight = render_view_fast(self, cameras[j], origins[j], dirs[j], size, n_coarse, n_fine,
                                                      background, jitter, u)
                rgb_out[j], depth_out[j], weight_out[j] = rgb.T, depth.T, weight.T
                if progress is not None:
                    progress(j + 1, m)
        shape = (m, -1, size, size)
        return {"rgb": rgb_out.view(shape), "depth": depth_out.view(shape), "weight": weight_out.view(shape)}


def hit_mask(fast: FastField, camera: Tensor, size: int) -> Tensor:
    """Rays [size * size] of a view (render camera [25]) that may see something: an upper bound of each ray's optical
    depth, from the occupied cells splatted onto the image, above HIT_DEPTH (a ray below it is background to within
    that much).

    Conservative: a ray through a cell passes within the projection of the cell's bounding sphere (radius r at depth
    z: at most f r / (z - r), stretched by 1 + tan² off the optical axis), so its pixel centre lies within that reach
    plus 0.71 px (the rounding of the projected centre) of the cell's pixel, inside a box of that many whole pixels;
    there it picks up at most the cell's max density times its diagonal. A camera close to (or inside) the occupied
    region, or one with a skew, marks everything.
    """
    centres, depth, radius = fast.splat_cells
    total = torch.zeros(1, 1, size, size, device=camera.device)
    if len(centres) == 0:
        return total.view(-1).bool()
    k = camera[16:25].view(3, 3)
    uv, z = project(centres[None], conditioning_cameras(camera[None]))
    uv, z = uv[0], z[0]
    if z.min() < 4 * radius or k[0, 1] != 0:
        return total.fill_(1).view(-1).bool()
    cols, rows = uv[:, 0] * size - 0.5, uv[:, 1] * size - 0.5  # pixel (i, j) is centred at ((j + .5), (i + .5)) / size
    tan = torch.hypot((uv[:, 0] - k[0, 2]) / k[0, 0], (uv[:, 1] - k[1, 2]) / k[1, 1])
    angular = radius / (z - radius)
    reach = torch.maximum(k[0, 0], k[1, 1]) * size * angular * (1 + (tan + angular) ** 2) + 0.71
    steps = reach.long()  # whole pixels within the reach: a box of them holds the disc
    low = int(steps.min())
    pixels = rows.round().clamp(0, size - 1).long() * size + cols.round().clamp(0, size - 1).long()
    seeds = torch.zeros(int(steps.max()) - low + 1, size * size, device=camera.device)
    seeds.view(-1).index_add_(0, (steps - low) * size * size + pixels, depth)
    for i in torch.nonzero(seeds.any(1)).squeeze(1).tolist():
        r = i + low
        box = F.avg_pool2d(seeds[i].view(1, 1, size, size), (2 * r + 1, 1), 1, padding=(r, 0), divisor_override=1)
        total += F.avg_pool2d(box, (1, 2 * r + 1), 1, padding=(0, r), divisor_override=1)
    return total.view(-1) > HIT_DEPTH


def _along(origins: Tensor, dirs: Tensor, depths: Tensor) -> Tensor:
    return torch.addcmul(origins.unsqueeze(1), depths.unsqueeze(-1), dirs.unsqueeze(1))  # [R, S, 3]


def density_along(cache: FieldCache, origins: Tensor, dirs: Tensor, depths: Tensor) -> Tensor:
    """Cached raw density at depths [R, S] along rays [R, 3] -> [R, S]. The caller marks samples that may lie
    outside the box (see `render_rays_cached`)."""
    xyz = _along(origins, dirs, depths)
    return cache.lookup(cache.density_volume, xyz.view(-1, 3))[:, 0].view(depths.shape)


def _merge(a: Tensor, va: Tensor, b: Tensor, vb: Tensor) -> tuple[Tensor, Tensor]:
    """Merge two per-row ascending depth arrays [R, Sa], [R, Sb] with their values -> depths, values [R, Sa + Sb]:
    the order `sort(cat([a, b]))` gives (a tie puts b's sample first; tied samples span no interval), without the
    sort: each element's place is its index plus the number of elements of the other array before it."""
    r = a.shape[0]
    pos_a = torch.arange(a.shape[1], device=a.device) + torch.searchsorted(b, a, right=True)
    pos_b = torch.arange(b.shape[1], device=a.device) + torch.searchsorted(a, b, right=False)
    depths = a.new_empty(r, a.shape[1] + b.shape[1])
    values = va.new_empty(depths.shape)
    depths.scatter_(1, pos_a, a).scatter_(1, pos_b, b)
    values.scatter_(1, pos_a, va).scatter_(1, pos_b, vb)
    return depths, values


def render_rays_cached(cache: FieldCache, rays: RayBundle, n_coarse: int, n_fine: int, background: float = 1.0
                       ) -> tuple[Tensor, Tensor, Tensor]:
    """`renderer.render_rays` on the cache -> rgb [R, 3], depth [R, 1] (unclamped), weight [R, 1].

    Same sample positions and compositing. The compositing weights need densities only; the colour of an interval
    is the mean of its two ends, so the pixel is sum_k c_k (w_{k-1} + w_k) / 2 over samples k, and colours are looked
    up only where that coefficient is above COLOR_WEIGHT (near surfaces), not at all ~96 samples of the ray.
    """
    depths = stratified_depths(rays.near, rays.far, n_coarse, rays.jitter)
    raw = density_along(cache, rays.origins, rays.dirs, depths)
    # Out-of-box samples are empty (OUT_OF_BOX_SIGMA) as in the reference. Stratified samples run from the box entry
    # to its exit, so only the two ends can be outside (by rounding; the last one also by its jitter); importance
    # samples lie between midpoints of stratified ones, inside the box.
    ends = _along(rays.origins, rays.dirs, depths[:, [0, -1]]).abs().amax(-1) > 1  # [R, 2]
    raw[:, [0, -1]] = raw[:, [0, -1]].masked_fill(ends, OUT_OF_BOX_SIGMA)
    if n_fine > 0:
        fine = importance_depths(depths, compositing_weights(raw, depths), n_fine, rays.u)
        if rays.u is not None:  # random draws give unordered depths (evenly spaced ones are ascending)
            fine = fine.sort(1).values
        raw_f = density_along(cache, rays.origins, rays.dirs, fine)
        depths, raw = _merge(depths, raw, fine, raw_f)
    weights = compositing_weights(raw, depths)  # [R, S - 1]
    total = weights.sum(1, keepdim=True)
    depth = torch.nan_to_num((weights * (depths[:, :-1] + depths[:, 1:]) / 2).sum(1, keepdim=True) / total,
                             float("inf"))
    coef = F.pad(weights, (1, 0)) + F.pad(weights, (0, 1))  # [R, S]: twice each sample's share of the colour
    ray, sample = torch.nonzero(coef > 2 * COLOR_WEIGHT, as_tuple=True)
    xyz = torch.addcmul(rays.origins[ray], depths[ray, sample].unsqueeze(-1), rays.dirs[ray])
    rgb = cache.lookup(cache.color_volume, xyz) * (coef[ray, sample] / 2).unsqueeze(-1)
    color = torch.zeros_like(rays.origins).index_add_(0, ray, rgb)
    return color + background * (1 - total), depth, total


def render_view_fast(fast: FastField, camera: Tensor, origins: Tensor, dirs: Tensor, size: int, n_coarse: int,
                     n_fine: int, background: float = 1.0, jitter: Tensor | None = None, u: Tensor | None = None,
                     chunk_rays: int = RAY_CHUNK) -> tuple[Tensor, Tensor, Tensor]:
    """All rays [R, 3] of one view (camera [25], R = size²) -> rgb [R, 3], depth [R, 1] (clamped like the
    reference), weight [R, 1].

    Rays that cross no occupied cell are background; the others go through the reference's renderer (same samples,
    same compositing) with the cache as the field.
    """
    box_near, box_far = ray_box_limits(origins, dirs)
    near, far = stand_in_limits(box_near, box_far)
    r = origins.shape[0]
    rgb = origins.new_full((r, 3), background)
    depth = origins.new_full((r, 1), float("inf"))
    weight = origins.new_zeros(r, 1)
    # the reference clamps depth to the range of all samples of the view; importance samples lie within the coarse
    lo = (near + (jitter[:, :1] * (far - near) / (n_coarse - 1) if jitter is not None else 0)).min().item()
    hi = (far + (jitter[:, -1:] * (far - near) / (n_coarse - 1) if jitter is not None else 0)).max().item()
    # rays that miss the box are background in the reference too (all their samples are out of the box)
    rows = torch.nonzero(hit_mask(fast, camera, size) & (box_far > box_near)[:, 0]).squeeze(1)
    if len(rows) and origins.device.type == "cpu" and raymarch.available() and fast.kernel:
        # one compiled loop per ray (lrm/raymarch.py); the tensor path below serves GPUs and machines without numba
        pick = lambda t: None if t is None else t[rows].contiguous().numpy().astype(np.float64)  # noqa: E731
        ends = stratified_depths(near[rows], far[rows], n_coarse, None if jitter is None else jitter[rows])[:, [0, -1]]
        outside = _along(origins[rows], dirs[rows], ends).abs().amax(-1) > 1  # [R, 2], as render_rays_cached
        out = raymarch.march(pick(origins), pick(dirs), pick(near[:, 0]), pick(far[:, 0]), outside.numpy(),
                             pick(jitter), pick(u), *fast.cache.arrays(), n_coarse, n_fine, background, COLOR_WEIGHT)
        rgb[rows] = torch.from_numpy(out[0]).to(rgb.dtype)
        depth[rows, 0] = torch.from_numpy(out[1]).to(depth.dtype)
        weight[rows, 0] = torch.from_numpy(out[2]).to(weight.dtype)
        return rgb, depth.clamp(lo, hi), weight
    for start in range(0, len(rows), chunk_rays):
        sel = rows[start:start + chunk_rays]
        rays = RayBundle(origins[sel], dirs[sel], near[sel], far[sel], None if jitter is None else jitter[sel],
                         None if u is None else u[sel])
        rgb[sel], depth[sel], weight[sel] = render_rays_cached(fast.cache, rays, n_coarse, n_fine, background)
    return rgb, depth.clamp(lo, hi), weight
