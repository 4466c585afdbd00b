"""Procedural 3D objects: unions of 1-3 primitives with analytic signed distance, colour and shading; rendered views.

Everything is deterministic by seed and needs no download. Objects live in the triplane world ([-1, 1]^3, z up)
and are rendered with OpenLRM's camera conventions (`lrm.camera`). The colour field bakes a fixed world light into
the albedo (Lambert is view-independent), so input views, supervision views and 3D colour targets agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..camera import FOCAL, get_rays, look_at_origin, project, render_cameras, source_camera, sphere_positions
from ..field import grid_coordinates
from ..renderer import ray_box_limits

KINDS = ("sphere", "box", "rounded_box", "cylinder", "cone", "torus", "capsule")
LIGHT = F.normalize(torch.tensor([-0.45, -0.8, 0.6]), dim=0)  # from the front-left, above
AMBIENT, DIFFUSE = 0.45, 0.55
EXTENT = 0.8  # objects stay inside [-EXTENT, EXTENT]^3
SIDE = 1.5  # `Shape.normalized`: the longer side across the canonical view
BOX = 0.95  # placed objects (`Shape.framed`) stay inside [-BOX, BOX] across the view


def _length2(x: Tensor, y: Tensor) -> Tensor:
    return torch.sqrt(x * x + y * y)


def primitive_sdf(kind: str, p: Tensor, a: float, b: float, c: float) -> Tensor:
    """Signed distance (a lower bound for the cone) of a primitive in its local frame; p [P, 3] -> [P].

    Sizes: sphere (a = radius); box / rounded box (a, b, c = half extents); cylinder, capsule, cone (a = radius,
    b = half height along z); torus (a = ring radius, b = tube radius).
    """
    x, y, z = p.unbind(-1)
    if kind == "sphere":
        return p.norm(dim=-1) - a
    if kind in ("box", "rounded_box"):
        r = 0.3 * min(a, b, c) if kind == "rounded_box" else 0.0
        q = p.abs() - torch.tensor([a - r, b - r, c - r])
        return q.clamp_min(0).norm(dim=-1) + q.max(-1).values.clamp_max(0) - r
    if kind == "cylinder":
        dx, dz = _length2(x, y) - a, z.abs() - b
        return torch.minimum(torch.maximum(dx, dz), torch.zeros_like(dx)) + _length2(dx.clamp_min(0), dz.clamp_min(0))
    if kind == "capsule":
        return (p - torch.stack([torch.zeros_like(z), torch.zeros_like(z), z.clamp(-b, b)], -1)).norm(dim=-1) - a
    if kind == "cone":  # base radius a at z = -b, apex at z = +b: intersection of the slanted side and the base plane
        side = (_length2(x, y) * 2 * b - a * (b - z)) / math.hypot(2 * b, a)
        return torch.maximum(side, -z - b)
    if kind == "torus":
        return _length2(_length2(x, y) - a, z) - b
    raise ValueError(f"unknown primitive {kind!r}")


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


@dataclass
class Primitive:
    kind: str
    size: tuple[float, float, float]
    rotation: Tensor        # [3, 3] local -> world
    center: Tensor          # [3]
    colors: Tensor          # [2, 3] albedo: top half (local z > 0), bottom half; equal for a solid colour

    def sdf(self, p: Tensor) -> Tensor:
        return primitive_sdf(self.kind, self.local(p), *self.size)

    def local(self, p: Tensor) -> Tensor:
        return (p - self.center) @ self.rotation  # R^T (p - c) for row vectors

    def albedo(self, p: Tensor) -> Tensor:
        top = (self.local(p)[:, 2] > 0).unsqueeze(-1)
        return torch.where(top, self.colors[0], self.colors[1])

    def radius(self) -> float:
        """Bounding-sphere radius in the local frame."""
        a, b, c = self.size
        return {"sphere": a, "box": math.sqrt(a * a + b * b + c * c), "rounded_box": math.sqrt(a * a + b * b + c * c),
                "cylinder": math.hypot(a, b), "capsule": a + b, "cone": math.hypot(a, b), "torus": a + b}[self.kind]


def _random_color(rng: np.random.Generator) -> np.ndarray:
    # saturated-ish colours that stay visible on white: HSV with s in [0.5, 1], v in [0.35, 0.95]
    h, s, v = rng.uniform(0, 1), rng.uniform(0.5, 1.0), rng.uniform(0.35, 0.95)
    i, f = int(h * 6) % 6, h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def random_primitive(rng: np.random.Generator, kind: str | None = None, scale: float = 1.0) -> Primitive:
    kind = kind or KINDS[rng.integers(len(KINDS))]
    u = lambda lo, hi: float(rng.uniform(lo, hi)) * scale  # noqa: E731
    size = {"sphere": (u(0.3, 0.55), 0.0, 0.0), "box": (u(0.2, 0.5), u(0.2, 0.5), u(0.2, 0.5)),
            "rounded_box": (u(0.25, 0.5), u(0.25, 0.5), u(0.25, 0.5)), "cylinder": (u(0.2, 0.4), u(0.2, 0.5), 0.0),
            "capsule": (u(0.15, 0.3), u(0.15, 0.35), 0.0), "cone": (u(0.25, 0.45), u(0.25, 0.5), 0.0),
            "torus": (u(0.3, 0.45), u(0.08, 0.16), 0.0)}[kind]
    top = _random_color(rng)
    bottom = top if rng.uniform() < 0.5 else _random_color(rng)
    prim = Primitive(kind, size, torch.tensor(_random_rotation(rng), dtype=torch.float32), torch.zeros(3),
                     torch.tensor(np.stack([top, bottom]), dtype=torch.float32))
    room = max(0.0, EXTENT - prim.radius())
    prim.center = torch.tensor(rng.uniform(-1, 1, 3) * min(room, 0.35), dtype=torch.float32)
    return prim


class Shape:
    """A union of primitives with analytic occupancy, albedo and shaded colour.

    `scale` and `offset` place it: world point p is the primitives' point p * scale + offset.
    """

    def __init__(self, primitives: list[Primitive], scale: float = 1.0, offset: Tensor | None = None):
        self.primitives = primitives
        self.scale = scale
        self.offset = torch.zeros(3) if offset is None else offset

    def _raw(self, p: Tensor) -> Tensor:
        return p * self.scale + self.offset

    def _raw_sdf(self, q: Tensor) -> Tensor:
        return torch.stack([prim.sdf(q) for prim in self.primitives]).min(0).values

    def normalized(self, extent: float = SIDE, max_depth: float = 1.9, grid: int = 48) -> "Shape":
        """The same object, centred on its bounding box and scaled so that the longer of its x and z sides (the
        image axes of the canonical input camera) is `extent`, its depth (y) side at most `max_depth`.

        A first, 3D-only placement; `framed` then matches it to the picture (the objects of the training protocol).
        """
        q = grid_coordinates(grid, 0, grid ** 3)
        return self._normalized(q, self._raw_sdf(q), extent, max_depth, grid)

    def _normalized(self, q: Tensor, sdf: Tensor, extent: float, max_depth: float, grid: int) -> "Shape":
        """`normalized` from the raw signed distances `sdf` at the grid points `q`."""
        inside = q[sdf < 0]
        if len(inside) == 0:
            return self
        cell = 2 / (grid - 1)
        lo, hi = inside.min(0).values - cell / 2, inside.max(0).values + cell / 2
        size = hi - lo
        scale = max(float(max(size[0], size[2])) / extent, float(size[1]) / max_depth)
        return Shape(self.primitives, scale, (lo + hi) / 2)

    def framed(self, ratio: float, distance: float = 2.0, max_depth: float = 1.9, grid: int = 48,
               iterations: int = 4) -> "Shape":
        """The same object placed so that OpenLRM's canonical input camera (`distance`, intrinsics 0.75 / 0.5) sees
        its 2D bounding box centred with the longer side `ratio` of the frame, i.e. what `lrm.preprocess`'s recentring
        makes of any image at foreground_ratio = ratio. Its depth (y) stays centred on its bounding box, at most
        `max_depth` deep (a deeper object is made smaller in the picture instead).

        So the canonical view of the placed object *is* the input image: the conditioning camera projects every point
        exactly where the image shows it (no hidden zoom or shift between the picture and the 3D frame).
        """
        q = grid_coordinates(grid, 0, grid ** 3)
        sdf = self._raw_sdf(q)  # one evaluation serves the 3D placement and the projected extremes
        base = self._normalized(q, sdf, SIDE, max_depth, grid)
        cell = 2 / (grid - 1)
        q = q[sdf < cell / 2]  # grid points up to half a cell outside: extremes ~ on the surface
        if len(q) == 0:
            return self
        camera = source_view_camera(distance)[0][None]
        scale, offset = base.scale, base.offset.clone()
        for _ in range(iterations):
            p = (q - offset) / scale
            uv = project(p[None], camera)[0][0]
            lo, hi = uv.min(0).values, uv.max(0).values
            depth = float(p[:, 1].max() - p[:, 1].min())
            zoom = min(ratio / float((hi - lo).max()), max_depth / depth, BOX / float(p[:, [0, 2]].abs().max()))
            scale = scale / zoom  # world points scale by `zoom` about the origin
            p = p * zoom
            center = (lo + hi) / 2
            shift = torch.tensor([-(float(center[0]) - 0.5) * distance / FOCAL,
                                  -(float(p[:, 1].max() + p[:, 1].min()) / 2),
                                  (float(center[1]) - 0.5) * distance / FOCAL])
            offset = offset - shift * scale
        return Shape(self.primitives, scale, offset)

    @classmethod
    def random(cls, seed: int, kind: str | None = None) -> "Shape":
        rng = np.random.default_rng(seed)
        n = 1 if kind else int(rng.integers(1, 4))
        scale = 1.0 if n == 1 else 0.8
        return cls([random_primitive(rng, kind if i == 0 else None, scale) for i in range(n)])

    @property
    def kind(self) -> str:
        return "+".join(p.kind for p in self.primitives)

    def sdf(self, p: Tensor) -> Tensor:
        """p [P, 3] -> signed distance [P] (negative inside)."""
        return self._raw_sdf(self._raw(p)) / self.scale

    def normal(self, p: Tensor, eps: float = 1e-3) -> Tensor:
        offsets = torch.eye(3) * eps
        grad = torch.stack([self.sdf(p + o) - self.sdf(p - o) for o in offsets], -1)
        return F.normalize(grad, dim=-1)

    def color(self, p: Tensor) -> Tensor:
        """Shaded colour [P, 3] in [0, 1]: the albedo of the nearest primitive under the fixed world light."""
        q = self._raw(p)
        nearest = torch.stack([prim.sdf(q) for prim in self.primitives]).argmin(0)  # [P]
        albedo = torch.zeros(p.shape[0], 3)
        for k, prim in enumerate(self.primitives):
            mask = nearest == k
            if mask.any():
                albedo[mask] = prim.albedo(q[mask])
        shade = AMBIENT + DIFFUSE * (self.normal(p) @ LIGHT).clamp_min(0)
        return (albedo * shade.unsqueeze(-1)).clamp(0, 1)

    def march(self, origins: Tensor, dirs: Tensor, start: Tensor, stop: Tensor,
              steps: int = 64) -> tuple[Tensor, Tensor]:
        """Sphere tracing of rays [R, 3] from distance `start` [R] until `stop` [R] -> distance of the first surface
        [R] (where the march ended if none), hit mask [R]."""
        t = start.clone()
        active = torch.nonzero(stop > t).squeeze(1)  # only rays with room to march, and only until they converge
        hit = torch.zeros(origins.shape[0], dtype=torch.bool)
        for _ in range(steps):
            if len(active) == 0:
                break
            dist = self.sdf(origins[active] + t[active, None] * dirs[active])
            t[active] += dist.clamp_min(0) * 0.95
            done = dist < 1e-3
            hit[active[done]] = True
            active = active[~done & (t[active] < stop[active])]
        return t, hit

    def trace(self, origins: Tensor, dirs: Tensor, steps: int = 64) -> tuple[Tensor, Tensor]:
        """Sphere tracing of rays [R, 3] -> colour on white [R, 3], hit mask [R]. Rays start at the [-1, 1]^3 box."""
        near, far = ray_box_limits(origins, dirs)
        t, hit = self.march(origins, dirs, near[:, 0].clamp_min(0), far[:, 0], steps)
        rgb = torch.ones_like(origins)
        if hit.any():
            rgb[hit] = self.color(origins[hit] + t[hit, None] * dirs[hit])
        return rgb, hit

    def render(self, cameras: Tensor, size: int, steps: int = 64) -> tuple[Tensor, Tensor]:
        """Sphere-traced views from render cameras [M, 25] -> rgb [M, 3, H, W] on white, alpha [M, 1, H, W]."""
        origins, dirs = get_rays(cameras, size)  # [M, R, 3]
        rgb, hit = self.trace(origins.reshape(-1, 3), dirs.reshape(-1, 3), steps)
        m = cameras.shape[0]
        return rgb.view(m, size, size, 3).permute(0, 3, 1, 2), hit.float().view(m, 1, size, size)


def source_view_camera(distance: float = 2.0, azimuth: float = 0.0, elevation: float = 0.0) -> tuple[Tensor, Tensor]:
    """A camera looking at the origin from `distance`; azimuth/elevation (radians) 0 is OpenLRM's canonical input
    camera on -y. Returns (conditioning camera [16], render camera [25])."""
    c2w = look_at_origin(sphere_positions([azimuth], [elevation], distance))
    render = render_cameras(c2w)[0]
    cond = torch.cat([c2w[0].reshape(12), source_camera(distance)[0, 12:]])
    return cond, render


def render_rgba(shape: Shape, camera: Tensor, size: int) -> np.ndarray:
    """One view as uint8 RGBA [H, W, 4] (colour over transparent background)."""
    rgb, alpha = shape.render(camera[None], size)
    rgba = torch.cat([rgb[0], alpha[0]]).permute(1, 2, 0)
    return (rgba.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
