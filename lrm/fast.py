"""The fast path: the reference's algorithms, evaluating the field only where it matters.

One coarse density pass (a G³ grid, 64 by default) is reused for everything:
- mesh: the fine grid is evaluated only in coarse cells near the surface (coarse-to-fine marching cubes); elsewhere
  the coarse grid, trilinearly upsampled, stands in (it is far from the threshold there, so no surface is lost);
- video: the reference's sampling (48 stratified + 48 importance samples per ray, same positions) is kept, but samples
  in empty cells are not evaluated (density taken as 0, unless they end an interval whose other end is occupied) and
  neither are samples behind an opaque surface (their weights are below 1e-4 anyway); rays that meet no occupied
  cell are background without any field query.
The decoder's first layer is linear, so it is applied to the planes once (3C -> 64 channels per plane, then sampled),
instead of to every sampled feature vector: exact up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .mesh import density_grid, grid_points
from .renderer import (OUT_OF_BOX_SIGMA, composite, density_activation, importance_depths, stratified_depths,
                       view_ray_limits)

EMPTY_DENSITY = 1e-3     # a cell whose (dilated) density stays below this is empty: optical depth < 0.003 over the box
OPAQUE_TRANSMITTANCE = 1e-4  # samples behind this transmittance are not evaluated
COARSE = 64


class ProjectedField:
    """The triplane field with the decoder's first layer folded into the planes (sample 64 channels, not 3C)."""

    def __init__(self, model, planes: Tensor):
        self.decoder = model.synthesizer.decoder
        net = self.decoder.net
        first = net[0]
        c = planes.shape[2]
        weights = first.weight.view(first.out_features, 3, c)  # plane-major concatenation of the features
        # (3, hidden, H, W): plane k's features projected by its block of the first layer
        self.planes = torch.einsum("okc,kchw->kohw", weights, planes[0])
        self.bias = first.bias
        self.rest = net[1:]

    def __call__(self, xyz: Tensor) -> tuple[Tensor, Tensor]:
        """Points [P, 3] -> raw density [P, 1], rgb [P, 3] (same as TriplaneField up to rounding)."""
        uv = torch.stack([xyz[:, [0, 1]], xyz[:, [0, 2]], xyz[:, [2, 1]]])  # (3, P, 2)
        h = F.grid_sample(self.planes, uv.unsqueeze(1).to(self.planes.dtype), mode="bilinear", padding_mode="zeros",
                          align_corners=False)  # (3, hidden, 1, P)
        return self.decoder.outputs(self.rest(h.sum(0)[:, 0].T + self.bias))  # (P, 1), (P, 3)

    def query(self, xyz: Tensor, chunk: int = 2 ** 18) -> tuple[Tensor, Tensor]:
        outs = [self(xyz[i:i + chunk]) for i in range(0, xyz.shape[0], chunk)]
        if not outs:
            return xyz.new_zeros(0, 1), xyz.new_zeros(0, 3)
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


@dataclass
class Occupancy:
    """Per coarse cell: may it hold density (dilated max > EMPTY_DENSITY), and a lower bound of its density."""
    occupied: Tensor      # bool [G-1, G-1, G-1]
    density_lb: Tensor    # [G-1, G-1, G-1]
    cells: int

    @classmethod
    def from_grid(cls, grid: Tensor) -> "Occupancy":
        v = grid[None, None]  # (1, 1, G, G, G)
        cell_max = F.max_pool3d(v, 2, 1)  # max of the 8 corners of each cell
        cell_min = -F.max_pool3d(-v, 2, 1)
        occupied = F.max_pool3d(cell_max, 3, 1, padding=1)[0, 0] > EMPTY_DENSITY  # dilated by one cell
        density_lb = -F.max_pool3d(-cell_min, 3, 1, padding=1)[0, 0]  # eroded by one cell
        return cls(occupied, density_lb.clamp_min(0), grid.shape[0] - 1)

    def cell_index(self, xyz: Tensor) -> tuple[Tensor, Tensor]:
        """Flat cell index of points [..., 3] and whether they lie inside the [-1, 1]^3 box."""
        inside = ((xyz >= -1) & (xyz <= 1)).all(-1)
        ijk = ((xyz + 1) * (self.cells / 2)).long().clamp(0, self.cells - 1)
        return (ijk[..., 0] * self.cells + ijk[..., 1]) * self.cells + ijk[..., 2], inside

    def lookup(self, xyz: Tensor) -> tuple[Tensor, Tensor]:
        """Points [..., 3] -> (maybe occupied [...], density lower bound [...]); False / 0 outside the box."""
        idx, inside = self.cell_index(xyz)
        occupied = self.occupied.reshape(-1)[idx] & inside
        return occupied, torch.where(inside, self.density_lb.reshape(-1)[idx], 0.0)


class FastField:
    """What the fast mesh and video share for one plane set [1, 3, C, H, W]: projected planes and the coarse grid."""

    def __init__(self, model, planes: Tensor, coarse: int = COARSE):
        if planes.shape[0] != 1:
            raise ValueError("FastField takes one plane set [1, 3, C, H, W]")
        with torch.inference_mode():
            self.model, self.planes = model, planes
            self.field = ProjectedField(model, planes)
            self.coarse_grid = density_grid(model, planes, coarse)
            self.occupancy = Occupancy.from_grid(self.coarse_grid.float())


# ----------------------------------------------------------------------------------------------------------------
# Mesh


def fine_density_grid(fast: FastField, resolution: int, threshold: float, dilation: int = 1,
                      chunk: int = 2 ** 18) -> Tensor:
    """Density on the G³ grid evaluated only near the `threshold` surface -> [G, G, G] (axes x, y, z).

    Coarse cells whose corners straddle the threshold, dilated by `dilation` cells, are evaluated at full
    resolution; everywhere else the trilinearly upsampled coarse grid stands in (its values stay on one side of the
    threshold there, so marching cubes finds no surface in them, as on the full grid).
    """
    coarse = fast.coarse_grid.float()
    g_c = coarse.shape[0]
    v = coarse[None, None]
    straddles = (F.max_pool3d(v, 2, 1) >= threshold) & (-F.max_pool3d(-v, 2, 1) <= threshold)
    active = F.max_pool3d(straddles.float(), 2 * dilation + 1, 1, padding=dilation)[0, 0] > 0  # (g_c-1)^3
    out = F.interpolate(v, size=(resolution,) * 3, mode="trilinear", align_corners=True)[0, 0]
    # fine vertex i lies in coarse cell floor(i * (g_c - 1) / (G - 1)); it is evaluated when that cell (or the cell
    # it borders) is active
    axis = torch.arange(resolution, device=coarse.device) * (g_c - 1) / (resolution - 1)
    lo = axis.floor().long().clamp(0, g_c - 2)
    hi = axis.ceil().long().clamp(0, g_c - 2)
    a = active
    need = a[lo][:, lo][:, :, lo] | a[hi][:, hi][:, :, hi] | a[lo][:, hi][:, :, lo] | a[hi][:, lo][:, :, hi] \
        | a[lo][:, lo][:, :, hi] | a[hi][:, hi][:, :, lo] | a[lo][:, hi][:, :, hi] | a[hi][:, lo][:, :, lo]
    idx = torch.nonzero(need.reshape(-1)).squeeze(1)
    flat = out.reshape(-1)
    for start in range(0, len(idx), chunk):
        part = idx[start:start + chunk]
        raw, _ = fast.field(grid_points(resolution, part).to(fast.planes.dtype))
        flat[part] = density_activation(raw[:, 0]).float()
    return out


# ----------------------------------------------------------------------------------------------------------------
# Rendering


def _evaluate(fast: FastField, xyz: Tensor, mask: Tensor, colors: Tensor | None = None,
              sigma: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Field at the masked points of xyz [R, S, 3] -> colors [R, S, 3] (0 elsewhere), raw sigma [R, S, 1] (empty
    elsewhere); existing colors / sigma are updated in place at the mask."""
    r, s = mask.shape
    colors = xyz.new_zeros(r, s, 3) if colors is None else colors
    sigma = xyz.new_full((r, s, 1), OUT_OF_BOX_SIGMA) if sigma is None else sigma
    if mask.any():
        raw, rgb = fast.field.query(xyz[mask])
        colors[mask] = rgb.to(colors.dtype)
        sigma[mask] = raw.to(sigma.dtype)
    return colors, sigma


def _with_neighbours(mask: Tensor) -> Tensor:
    """mask [R, S] grown by one sample either way along each ray.

    The compositing averages the *raw* density of an interval's two ends before the activation, so an interval
    from an empty sample (raw -6, say) into a dense one (raw +10) has a real density (softplus(1) = 1.3): the empty end
    must be evaluated too, not assumed empty (raw -inf would give 0).
    """
    grown = mask.clone()
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown


def render_rays_fast(fast: FastField, origins: Tensor, dirs: Tensor, near: Tensor, far: Tensor, n_coarse: int,
                     n_fine: int, background: float = 1.0, jitter: Tensor | None = None, u: Tensor | None = None
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`renderer.render_rays` with empty-space and behind-surface samples skipped; same outputs and conventions."""
    r = origins.shape[0]
    depths = stratified_depths(near, far, n_coarse, jitter)  # (R, Sc)
    xyz = origins.unsqueeze(1) + depths.unsqueeze(-1) * dirs.unsqueeze(1)
    occupied, density_lb = fast.occupancy.lookup(xyz)
    # An upper bound of the transmittance from the eroded grid: skip coarse samples that are surely behind a surface.
    deltas = torch.cat([depths[:, 1:] - depths[:, :-1], torch.zeros_like(depths[:, :1])], 1)
    optical = torch.cumsum(density_lb * deltas, 1) - density_lb * deltas  # before each sample
    # samples outside the box stay empty, as in the reference, even next to an occupied one
    visible = (torch.exp(-optical) > OPAQUE_TRANSMITTANCE) & ((xyz >= -1) & (xyz <= 1)).all(-1)
    done = _with_neighbours(occupied & visible) & visible
    colors, sigma = _evaluate(fast, xyz, done)
    _, _, weights = composite(colors, sigma, depths.unsqueeze(-1), background)
    fine = importance_depths(depths, weights.squeeze(-1), n_fine, u)  # (R, Sf), same positions as the reference
    # actual transmittance of the coarse pass, to skip fine samples behind the surface
    trans = 1 - torch.cumsum(weights.squeeze(-1), 1)  # transmittance after each coarse interval
    opaque = trans < OPAQUE_TRANSMITTANCE
    first_opaque = torch.where(opaque.any(1), depths[:, 1:].masked_fill(~opaque, float("inf")).min(1).values,
                               torch.full((r,), float("inf"), device=depths.device))
    xyz_f = origins.unsqueeze(1) + fine.unsqueeze(-1) * dirs.unsqueeze(1)
    occupied_f, _ = fast.occupancy.lookup(xyz_f)
    in_front = (fine <= first_opaque.unsqueeze(1)) & ((xyz_f >= -1) & (xyz_f <= 1)).all(-1)
    # In the merged order, evaluate the occupied samples in front of the surface and their neighbours.
    all_depths = torch.cat([depths, fine], 1)
    order = torch.sort(all_depths, dim=1).indices
    wanted = torch.cat([occupied & visible, occupied_f & in_front], 1)
    need = torch.zeros_like(wanted).scatter_(1, order, _with_neighbours(torch.gather(wanted, 1, order)))
    need &= torch.cat([visible, in_front], 1)
    colors, sigma = _evaluate(fast, xyz, need[:, :n_coarse] & ~done, colors, sigma)
    colors_f, sigma_f = _evaluate(fast, xyz_f, need[:, n_coarse:])
    depths = torch.gather(all_depths, 1, order)
    colors = torch.gather(torch.cat([colors, colors_f], 1), 1, order.unsqueeze(-1).expand(-1, -1, 3))
    sigma = torch.gather(torch.cat([sigma, sigma_f], 1), 1, order.unsqueeze(-1))
    rgb, depth, weights = composite(colors, sigma, depths.unsqueeze(-1), background)
    return rgb, depth, weights.sum(1), depths


def render_view_fast(fast: FastField, origins: Tensor, dirs: Tensor, n_coarse: int, n_fine: int,
                     background: float = 1.0, jitter: Tensor | None = None, u: Tensor | None = None,
                     chunk_rays: int = 8192) -> tuple[Tensor, Tensor, Tensor]:
    """All rays [R, 3] of one view -> rgb [R, 3], depth [R, 1] (clamped like the reference), weight [R, 1].

    Rays that meet no occupied cell along their coarse and importance samples are background without any query.
    """
    near, far = view_ray_limits(origins, dirs)
    r = origins.shape[0]
    rgb = origins.new_full((r, 3), background)
    depth = origins.new_full((r, 1), float("inf"))
    weight = origins.new_zeros(r, 1)
    lo, hi = float("inf"), float("-inf")
    for start in range(0, r, chunk_rays):
        sl = slice(start, start + chunk_rays)
        o, d, n_, f_ = origins[sl], dirs[sl], near[sl], far[sl]
        jit = None if jitter is None else jitter[sl]
        uu = None if u is None else u[sl]
        depths = stratified_depths(n_, f_, n_coarse, jit)
        lo, hi = min(lo, depths.min().item()), max(hi, depths.max().item())
        # a ray can only see something if it crosses an occupied cell between its first and last sample
        steps = torch.linspace(0, 1, 2 * n_coarse, device=o.device)
        probe = depths[:, :1] + steps * (depths[:, -1:] - depths[:, :1])
        hits = fast.occupancy.lookup(o.unsqueeze(1) + probe.unsqueeze(-1) * d.unsqueeze(1))[0].any(1)
        rows = torch.nonzero(hits).squeeze(1)
        if len(rows) == 0:
            continue
        out_rgb, out_depth, out_weight, all_depths = render_rays_fast(
            fast, o[rows], d[rows], n_[rows], f_[rows], n_coarse, n_fine, background,
            None if jit is None else jit[rows], None if uu is None else uu[rows])
        rgb[start + rows], depth[start + rows], weight[start + rows] = out_rgb, out_depth, out_weight
    return rgb, depth.clamp(lo, hi), weight
