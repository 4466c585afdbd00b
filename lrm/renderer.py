"""The triplane field (plane sampling + 4-layer decoder) and OpenLRM's volume renderer, ported numerically verbatim.

Field: planes [N, 3, C, H, W] x points [N, P, 3] -> raw density [N, P, 1] and colour [N, P, 3].
Renderer: rays -> 48 stratified + 48 importance samples (for 96 per ray) -> MipNeRF compositing over a white background.
Stochastic sampling is the reference's (uniform jitter, random inverse-CDF `u`); deterministic uses jitter 0 and
evenly spaced `u` (`sample_pdf(det=True)`), so the same planes always give the same pictures.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Out-of-box samples get a raw density of -FLT_MAX / 8 (OpenLRM v1.1 `SAFE_GUARD = 8`; v1.0 divides by 3). Both give
# softplus(. - 1) == 0 exactly, also when averaged with an in-box neighbour, so the two releases render identically.
OUT_OF_BOX_SIGMA = torch.finfo(torch.float32).min / 8


def density_activation(raw: Tensor) -> Tensor:
    return F.softplus(raw - 1)  # softplus(x - 1): EG3D's activation bias, "makes things initialize better"


def sample_triplane(planes: Tensor, xyz: Tensor) -> Tensor:
    """Bilinear features of points xyz [N, P, 3] in planes [N, 3, C, H, W] -> [N, 3, P, C].

    Plane 0 is sampled at (x, y), plane 1 at (x, z), plane 2 at (z, y) (EG3D's fixed axes, eg3d#67); box_warp = 2 so
    coordinates in [-1, 1] are used as they are; zeros outside.
    """
    n, _, c, h, w = planes.shape
    uv = torch.stack([xyz[..., [0, 1]], xyz[..., [0, 2]], xyz[..., [2, 1]]], dim=1)  # [N, 3, P, 2]
    feats = F.grid_sample(planes.reshape(n * 3, c, h, w), uv.reshape(n * 3, 1, -1, 2).to(planes.dtype),
                          mode="bilinear", padding_mode="zeros", align_corners=False)  # [N*3, C, 1, P]
    return feats.permute(0, 3, 2, 1).reshape(n, 3, -1, c)


class TriplaneDecoder(nn.Module):
    """OpenLRM's OSGDecoder: concatenated plane features 3C -> 64 -> 64 -> 64 -> 4 with ReLU (view direction unused)."""

    def __init__(self, triplane_dim: int, hidden: int = 64, density_scale: float = 1.0, density_shift: float = 0.0):
        super().__init__()
        # raw = scale * output + shift; 1 and 0 for every released model (config.density_scale / density_shift)
        self.density_scale, self.density_shift = density_scale, density_shift
        self.net = nn.Sequential(nn.Linear(3 * triplane_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 4))
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        """feats [N, 3, P, C] -> raw density [N, P, 1], rgb [N, P, 3]."""
        n, _, p, c = feats.shape
        return self.outputs(self.net(feats.permute(0, 2, 1, 3).reshape(n, p, 3 * c)))  # plane-major concatenation

    def outputs(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The MLP's 4 outputs [..., 4] -> raw density [..., 1], rgb [..., 3]."""
        rgb = torch.sigmoid(x[..., 1:]) * (1 + 2 * 0.001) - 0.001  # sigmoid clamping from MipNeRF
        raw = x[..., :1]
        if self.density_scale != 1 or self.density_shift != 0:
            raw = raw * self.density_scale + self.density_shift
        return raw, rgb


class TriplaneField(nn.Module):
    """`synthesizer` of the checkpoints: only the decoder holds weights."""

    def __init__(self, triplane_dim: int, density_scale: float = 1.0, density_shift: float = 0.0):
        super().__init__()
        self.decoder = TriplaneDecoder(triplane_dim, density_scale=density_scale, density_shift=density_shift)

    def forward(self, planes: Tensor, xyz: Tensor) -> tuple[Tensor, Tensor]:
        """planes [N, 3, C, H, W], xyz [N, P, 3] -> raw density [N, P, 1], rgb [N, P, 3]."""
        return self.decoder(sample_triplane(planes, xyz))


# ----------------------------------------------------------------------------------------------------------------
# Ray sampling


def ray_box_limits(origins: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
    """Entry/exit distances of rays [..., 3] through the box [-1, 1]^3 -> (t_near, t_far) [..., 1]; (-1, -2) on a miss.

    Slab test of EG3D's `get_ray_limits_box` (Petr Kellnhofer), same operations so the same values.
    """
    inv = 1 / dirs
    neg = inv < 0
    near_plane = torch.where(neg, 1.0, -1.0)
    far_plane = -near_plane
    t0 = (near_plane - origins) * inv  # [..., 3] per-axis entry
    t1 = (far_plane - origins) * inv
    tmin, tmax = t0[..., 0], t1[..., 0]
    valid = ~((tmin > t1[..., 1]) | (t0[..., 1] > tmax))
    tmin, tmax = torch.maximum(tmin, t0[..., 1]), torch.minimum(tmax, t1[..., 1])
    valid &= ~((tmin > t1[..., 2]) | (t0[..., 2] > tmax))
    tmin, tmax = torch.maximum(tmin, t0[..., 2]), torch.minimum(tmax, t1[..., 2])
    tmin = torch.where(valid, tmin, -1.0)
    tmax = torch.where(valid, tmax, -2.0)
    return tmin.unsqueeze(-1), tmax.unsqueeze(-1)


def view_ray_limits(origins: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
    """`ray_box_limits` for all rays of one view [R, 3], with `stand_in_limits` for the rays that miss the box."""
    return stand_in_limits(*ray_box_limits(origins, dirs))


def stand_in_limits(near: Tensor, far: Tensor) -> tuple[Tensor, Tensor]:
    """Box limits [R, 1] of one view's rays -> the same, where the rays that miss the box get the reference's stand-in
    interval [min(valid near), max(valid near)] (sic: the far end is the largest *near* distance)."""
    valid = far > near
    if valid.any():
        near = torch.where(valid, near, near[valid].min())
        far = torch.where(valid, far, near[valid].max())
    return near, far


def random_draws(rays: int, n_coarse: int, n_fine: int, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """The reference's stochastic sampler's random numbers for one view of R rays, drawn up front in its order: the
    coarse jitter [R, n_coarse] (`rand_like` of a depth-major permuted tensor, hence filled depth-major), then the
    pdf's u [R, n_fine]."""
    jitter = torch.rand(n_coarse, rays, generator=generator, device=device).T
    return jitter, torch.rand(rays, n_fine, generator=generator, device=device)


def stratified_depths(near: Tensor, far: Tensor, n: int, jitter: Tensor | None = None) -> Tensor:
    """n depths per ray from near to far [R, 1] (inclusive), each shifted by jitter [R, n] in [0, 1) bins -> [R, n]."""
    steps = torch.arange(n, dtype=torch.float32, device=near.device) / (n - 1)
    depths = near + steps * (far - near)
    if jitter is not None:
        depths = depths + jitter * ((far - near) / (n - 1))
    return depths


def sample_pdf(bins: Tensor, weights: Tensor, n: int, u: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Inverse-CDF samples [R, n] from piecewise-constant weights [R, B] over bins [R, >= B + 1].

    u [R, n] in [0, 1) are the random draws of the stochastic sampler; None means det=True (u = linspace(0, 1, n)).
    """
    r, b = weights.shape
    weights = weights + eps  # prevent division by zero
    pdf = weights / weights.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)  # [R, B + 1]
    if u is None:
        u = torch.linspace(0, 1, n, device=bins.device).expand(r, n)
    u = u.contiguous()
    idx = torch.searchsorted(cdf, u, right=True)
    below = (idx - 1).clamp_min(0)
    above = idx.clamp_max(b)
    gather_idx = torch.stack([below, above], -1).view(r, 2 * n)
    cdf_g = torch.gather(cdf, 1, gather_idx).view(r, n, 2)
    bins_g = torch.gather(bins, 1, gather_idx).view(r, n, 2)
    denom = cdf_g[..., 1] - cdf_g[..., 0]
    denom = torch.where(denom < eps, torch.ones_like(denom), denom)  # empty bin: never sampled, any value works
    return bins_g[..., 0] + (u - cdf_g[..., 0]) / denom * (bins_g[..., 1] - bins_g[..., 0])


def importance_depths(depths: Tensor, weights: Tensor, n: int, u: Tensor | None = None) -> Tensor:
    """Importance depths [R, n] from coarse depths [R, S] and their compositing weights [R, S - 1]."""
    w = F.max_pool1d(weights.unsqueeze(1).float(), 2, 1, padding=1)  # [R, 1, S]
    w = F.avg_pool1d(w, 2, 1).squeeze(1) + 0.01  # [R, S - 1]: smoothed, with a floor
    mids = 0.5 * (depths[:, :-1] + depths[:, 1:])
    return sample_pdf(mids, w[:, 1:-1], n, u)


# ----------------------------------------------------------------------------------------------------------------
# Compositing


def compositing_weights(sigma_raw: Tensor, depths: Tensor) -> Tensor:
    """The ray marcher's weights [R, S - 1, ...] of the intervals between samples sorted by depth [R, S, ...]: the
    raw density of an interval is the mean of its two ends, activated, then alpha-composited front to back."""
    deltas = depths[:, 1:] - depths[:, :-1]
    sigma_mid = density_activation((sigma_raw[:, :-1] + sigma_raw[:, 1:]) / 2)
    alpha = 1 - torch.exp(-sigma_mid * deltas)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha + 1e-10], 1), 1)[:, :-1]
    return alpha * trans


def composite(colors: Tensor, sigma_raw: Tensor, depths: Tensor, background: float = 1.0
              ) -> tuple[Tensor, Tensor, Tensor]:
    """MipNeRF ray marcher (EG3D `MipRayMarcher2`) on samples sorted by depth.

    colors [R, S, 3], sigma_raw [R, S, 1], depths [R, S, 1] -> rgb [R, 3], depth [R, 1] (NaN -> +inf where no weight;
    the caller clamps to the depth range), weights [R, S - 1, 1].
    """
    colors_mid = (colors[:, :-1] + colors[:, 1:]) / 2
    depths_mid = (depths[:, :-1] + depths[:, 1:]) / 2
    weights = compositing_weights(sigma_raw, depths)
    rgb = (weights * colors_mid).sum(1)
    total = weights.sum(1)
    depth = torch.nan_to_num((weights * depths_mid).sum(1) / total, float("inf"))
    return rgb + background * (1 - total), depth, weights


@dataclass
class RayBundle:
    """Rays of one view: origins, dirs [R, 3]; near/far [R, 1]; random draws for stochastic sampling or None."""
    origins: Tensor
    dirs: Tensor
    near: Tensor
    far: Tensor
    jitter: Tensor | None = None
    u: Tensor | None = None

    def chunk(self, start: int, stop: int) -> "RayBundle":
        part = lambda t: None if t is None else t[start:stop]  # noqa: E731
        return RayBundle(*(part(t) for t in (self.origins, self.dirs, self.near, self.far, self.jitter, self.u)))


def _query_along(field: TriplaneField, planes: Tensor, rays: RayBundle, depths: Tensor) -> tuple[Tensor, Tensor]:
    """Field at depths [R, S] along the rays -> colors [R, S, 3], raw sigma [R, S, 1]; out-of-box samples are empty."""
    xyz = rays.origins.unsqueeze(-2) + depths.unsqueeze(-1) * rays.dirs.unsqueeze(-2)  # [R, S, 3]
    sigma, rgb = field(planes, xyz.reshape(1, -1, 3))
    inside = ((xyz >= -1) & (xyz <= 1)).all(-1, keepdim=True).reshape(1, -1, 1)
    rgb = torch.where(inside, rgb, 0.0)
    sigma = torch.where(inside, sigma, OUT_OF_BOX_SIGMA)
    r, s = depths.shape
    return rgb.reshape(r, s, 3), sigma.reshape(r, s, 1)


def render_rays(field: TriplaneField, planes: Tensor, rays: RayBundle, n_coarse: int, n_fine: int,
                background: float = 1.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The reference's two-pass renderer for one plane set [1, 3, C, H, W] and R rays.

    Returns rgb [R, 3], depth [R, 1] (unclamped), weight [R, 1] (sum of weights) and the depths of all samples [R, S]
    (the caller needs their range over the whole view to clamp the depth like the reference).
    """
    depths = stratified_depths(rays.near, rays.far, n_coarse, rays.jitter)
    colors, sigma = _query_along(field, planes, rays, depths)
    if n_fine > 0:
        _, _, weights = composite(colors, sigma, depths.unsqueeze(-1), background)
        # No gradient through the choice of sample positions (the reference samples them under no_grad).
        fine = importance_depths(depths, weights.squeeze(-1).detach(), n_fine, rays.u)
        colors_f, sigma_f = _query_along(field, planes, rays, fine)
        depths = torch.cat([depths, fine], 1)
        order = torch.sort(depths, dim=1).indices
        depths = torch.gather(depths, 1, order)
        colors = torch.gather(torch.cat([colors, colors_f], 1), 1, order.unsqueeze(-1).expand(-1, -1, 3))
        sigma = torch.gather(torch.cat([sigma, sigma_f], 1), 1, order.unsqueeze(-1))
    rgb, depth, weights = composite(colors, sigma, depths.unsqueeze(-1), background)
    return rgb, depth, weights.sum(1), depths
