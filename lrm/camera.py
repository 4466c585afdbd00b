"""Cameras and rays, with OpenLRM's conventions stated once.

World: the triplane's frame, box [-1, 1]^3, **z up**; the canonical input camera sits at (0, -d, 0) looking along +y
(so the input view is the object's front, seen from -y). Camera matrices are 4x4 cam2world in OpenGL/Blender axes
(x right, y up, z backward); rays are lifted in OpenCV axes and converted with diag(1, -1, -1, 1).
Intrinsics are normalised by the image size: fx = fy = 0.75, cx = cy = 0.5 (a 384 px focal length at 512 px).

Two camera encodings:
- conditioning camera [N, 16]: the 3x4 cam2world flattened row-major + (fx, fy, cx, cy);
- render camera [M, 25]: the 4x4 cam2world flattened + the 3x3 intrinsics [[fx,0,cx],[0,fy,cy],[0,0,1]] flattened.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import InferDefaults

FOCAL = 0.75
PRINCIPAL = 0.5
ORBIT_RADIUS, ORBIT_HEIGHT = 2.0, 0.8  # the reference's render orbit (v1.1 `surrounding_views_linspace` defaults)


def source_camera(distance: float = InferDefaults.source_distance, batch_size: int = 1) -> Tensor:
    """The canonical conditioning camera at (0, -distance, 0) looking at the origin, z up -> [N, 16]."""
    extrinsics = torch.tensor([[1, 0, 0, 0],
                               [0, 0, -1, -distance],
                               [0, 1, 0, 0]], dtype=torch.float32)
    intrinsics = torch.tensor([FOCAL, FOCAL, PRINCIPAL, PRINCIPAL], dtype=torch.float32)
    return torch.cat([extrinsics.reshape(12), intrinsics]).unsqueeze(0).repeat(batch_size, 1)


def sphere_positions(azimuth, elevation, distance: float = 2.0) -> Tensor:
    """Points at `distance` from the origin -> [M, 3], for angles in radians (sequences of M): azimuth 0 and
    elevation 0 is the canonical input camera's place on -y; azimuth grows counter-clockwise seen from above (90
    degrees is +x), elevation towards +z. Computed in double precision, then float32."""
    return torch.tensor([[distance * math.cos(e) * math.sin(a), -distance * math.cos(e) * math.cos(a),
                          distance * math.sin(e)] for a, e in zip(azimuth, elevation)], dtype=torch.float32)


def look_at_origin(positions: Tensor) -> Tensor:
    """cam2world [M, 3, 4] for cameras at positions [M, 3] looking at the origin with world up +z."""
    up = torch.tensor([0, 0, 1], dtype=torch.float32).expand_as(positions)
    z = positions / positions.norm(dim=-1, keepdim=True)  # backward axis points from the origin to the camera
    x = torch.linalg.cross(up, z)
    x = x / x.norm(dim=-1, keepdim=True)
    y = torch.linalg.cross(z, x)
    y = y / y.norm(dim=-1, keepdim=True)
    return torch.stack([x, y, z, positions], dim=-1)


def render_cameras(cam2world: Tensor) -> Tensor:
    """cam2world [M, 3, 4] -> render cameras [M, 25] with the default intrinsics."""
    m = cam2world.shape[0]
    bottom = torch.tensor([[[0, 0, 0, 1]]], dtype=cam2world.dtype).repeat(m, 1, 1)
    c2w = torch.cat([cam2world, bottom], dim=1)  # [M, 4, 4]
    k = torch.tensor([[FOCAL, 0, PRINCIPAL], [0, FOCAL, PRINCIPAL], [0, 0, 1]], dtype=cam2world.dtype)
    return torch.cat([c2w.reshape(m, 16), k.reshape(1, 9).repeat(m, 1)], dim=-1)


def orbit_cameras(n_views: int, radius: float = ORBIT_RADIUS, height: float = ORBIT_HEIGHT, *,
                  endpoint: bool = True, views: slice = slice(None)) -> Tensor:
    """Cameras on a circle at `height` above the origin, `radius` away from it, looking at it -> [M, 25].

    The first view is in front (azimuth of the source camera, -y), then counter-clockwise seen from above.
    endpoint=True is OpenLRM v1.1's orbit: `linspace(-pi/2, 3pi/2, n_views)` **includes both end points, so the last
    view repeats the first**. endpoint=False is v1.0's: theta_i = 2 pi i / n - pi/2 (n distinct views).
    `views` makes only those of the n_views (the same cameras as the whole orbit's rows), e.g. a video's next chunk.
    """
    if n_views < 1:
        raise ValueError(f"n_views must be at least 1, got {n_views}")
    if not 0 <= height < radius:
        raise ValueError(f"height must be in [0, radius), got height={height}, radius={radius}")
    ground = math.sqrt(radius ** 2 - height ** 2)
    if endpoint:
        # v1.1 `surrounding_views_linspace`: float32 angles and trigonometry (the angles of every view: 4 bytes each)
        theta = torch.linspace(-math.pi / 2, 3 * math.pi / 2, n_views)[views]
        x, y = torch.cos(theta) * ground, torch.sin(theta) * ground
        positions = torch.stack([x, y, torch.full((len(theta),), height)], dim=1)
    else:
        # v1.0 `_get_surrounding_views`: angles and positions in double precision, then float32.
        theta = [2 * math.pi * i / n_views - math.pi / 2 for i in range(n_views)[views]]
        positions = torch.tensor([[ground * math.cos(t), ground * math.sin(t), height] for t in theta],
                                 dtype=torch.float32).reshape(-1, 3)
    return render_cameras(look_at_origin(positions))


def project(points: Tensor, camera: Tensor) -> tuple[Tensor, Tensor]:
    """World points [N, ..., 3] seen by conditioning cameras [N, 16] -> normalised image coordinates [N, ..., 2]
    (u right, v down; [0, 1] across the frame) and depth along the optical axis [N, ...], clamped to >= 1e-4 (points
    behind the camera get that depth). The inverse of `get_rays` for cameras without skew."""
    n = camera.shape[0]
    c2w = camera[:, :12].reshape(n, 3, 4)
    fx, fy, cx, cy = camera[:, 12:16].unbind(-1)
    flat = points.reshape(n, -1, 3)
    cam = torch.einsum("nij,npi->npj", c2w[:, :, :3], flat - c2w[:, None, :, 3])  # R^T (X - t), OpenGL axes
    depth = (-cam[..., 2]).clamp_min(1e-4)  # OpenGL looks along -z
    u = fx[:, None] * cam[..., 0] / depth + cx[:, None]
    v = fy[:, None] * -cam[..., 1] / depth + cy[:, None]  # image rows grow downwards
    return torch.stack([u, v], -1).reshape(*points.shape[:-1], 2), depth.reshape(points.shape[:-1])


def conditioning_cameras(cameras: Tensor) -> Tensor:
    """Render cameras [M, 25] -> the same cameras as conditioning cameras [M, 16] (a skew, if any, is dropped)."""
    k = cameras[:, 16:25].reshape(-1, 3, 3)
    return torch.cat([cameras[:, :12], k[:, 0, 0, None], k[:, 1, 1, None], k[:, 0, 2, None], k[:, 1, 2, None]], 1)


def get_rays(cameras: Tensor, size: int, exact: bool = True) -> tuple[Tensor, Tensor]:
    """Pixel-centre rays of render cameras [M, 25] at size x size -> origins, unit directions [M, R, 3], R = size².

    Ray r = i * size + j looks through pixel (row i from the top, column j) at ((j + 0.5) / size, (i + 0.5) / size).
    exact=False normalises the directions in a faster order (float rounding apart, the same rays).
    """
    m = cameras.shape[0]
    c2w = cameras[:, :16].reshape(m, 4, 4)
    k = cameras[:, 16:25].reshape(m, 3, 3)
    fx, fy, cx, cy, sk = (k[:, 0, 0, None], k[:, 1, 1, None], k[:, 0, 2, None], k[:, 1, 2, None], k[:, 0, 1, None])
    idx = torch.arange(size, dtype=torch.float32, device=cameras.device)
    rows, cols = torch.meshgrid(idx, idx, indexing="ij")
    res = torch.full((m, 1), float(size), device=cameras.device)  # v1.1 passes the resolution as a float tensor
    x_cam = cols.reshape(1, -1) * (1.0 / res) + (0.5 / res)  # [M, R]
    y_cam = rows.reshape(1, -1) * (1.0 / res) + (0.5 / res)
    z_cam = torch.ones_like(x_cam)
    x_lift = (x_cam - cx + cy * sk / fy - sk * y_cam / fy) / fx * z_cam
    y_lift = (y_cam - cy) / fy * z_cam
    points = torch.stack([x_lift, y_lift, z_cam, torch.ones_like(z_cam)], dim=-1)  # [M, R, 4], OpenCV camera axes
    opencv_to_gl = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], device=cameras.device)).expand(m, 4, 4)
    c2w = torch.bmm(c2w, opencv_to_gl)
    world = torch.bmm(c2w, points.transpose(1, 2)).transpose(1, 2)[..., :3]  # [M, R, 3]
    origins = c2w[:, None, :3, 3]
    if exact:  # the reference's F.normalize on this strided tensor: bit for bit, but a slow reduction
        dirs = F.normalize(world - origins, dim=-1)
    else:  # the same to ~1e-7, 10x faster (the fast path)
        dirs = F.normalize((world - origins).contiguous(), dim=-1)
    return origins.expand_as(dirs).contiguous(), dirs
