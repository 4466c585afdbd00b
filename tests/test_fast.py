"""The fast path against the faithful one: same pictures and mesh, far fewer field queries."""

import functools

import numpy as np
import pytest
import torch

import lrm
from lrm.camera import conditioning_cameras, project
from lrm.fast import FastField, FieldCache, hit_mask
from lrm.field import ReferenceField, grid_points
from lrm.mesh import extract_mesh
from lrm.train.data import make_shape
from lrm.train.fit import fit_planes

from conftest import REFCHECK, psnr

TINY = REFCHECK / "refcheck-tiny-1.1" / "model"


@functools.lru_cache(maxsize=None)
def model():
    return lrm.load_model(TINY)


@functools.lru_cache(maxsize=None)
def fitted_planes():
    """A realistic field: planes fitted to a procedural object (empty space around a solid, coloured object)."""
    return fit_planes(model(), make_shape(5), steps=300, points=4096)


def test_cache_holds_the_exact_field_at_its_vertices_and_interpolates_between():
    planes = fitted_planes()
    fast = FastField(model(), planes)
    r = fast.cache.resolution
    near = fast.occupancy.vertices_near(r).reshape(-1)
    idx = torch.nonzero(near).squeeze(1)[::97]
    xyz = grid_points(r, idx)
    with torch.no_grad():
        raw, rgb = model().synthesizer(planes, xyz[None])
        raw2, rgb2 = fast.cache(None, xyz[None])
    assert (raw - raw2).abs().max() < 1e-4 and (rgb - rgb2).abs().max() < 1e-5
    # between vertices: close to the field, and empty space far from the object stays empty
    xyz = torch.rand(1, 4000, 3) * 2 - 1
    with torch.no_grad():
        raw, _ = model().synthesizer(planes, xyz)
        raw2, _ = fast.cache(None, xyz)
    sigma, sigma2 = lrm.renderer.density_activation(raw), lrm.renderer.density_activation(raw2)
    assert (sigma - sigma2).abs().median() < 1e-3
    assert ((sigma > 3) == (sigma2 > 3)).float().mean() > 0.98


def test_fast_frames_match_reference_on_the_fixture_field():
    """A random fixture field is noise at the scale of its texels: the cache converges to it as it gets finer."""
    planes = torch.from_numpy(np.load(REFCHECK / "refcheck-tiny-1.1" / "out" / "intermediates.npz")["planes"])
    cameras = lrm.orbit_cameras(6)
    ref = ReferenceField(model(), planes).render(cameras, 24)
    scores = [psnr(FastField(model(), planes, resolution=res).render(cameras, 24)["rgb"], ref["rgb"])
              for res in (32, 128)]
    assert scores[0] < scores[1] and scores[1] >= 40


def test_fast_frames_match_reference_on_a_realistic_field():
    planes = fitted_planes()
    cameras = lrm.orbit_cameras(5)
    fields = ReferenceField(model(), planes), FastField(model(), planes)
    ref, fast = (f.render(cameras, 48) for f in fields)
    stochastic = [f.render(cameras[:1], 48, deterministic=False, generator=torch.Generator().manual_seed(3))["rgb"]
                  for f in fields]
    assert ref["weight"].mean() > 0.05  # there is an object in view
    assert psnr(fast["rgb"], ref["rgb"]) >= 35
    assert (fast["weight"] - ref["weight"]).abs().mean() < 5e-3
    finite = torch.isfinite(ref["depth"]) & (ref["weight"] > 0.5)
    assert (fast["depth"][finite] - ref["depth"][finite]).abs().mean() < 0.01
    assert psnr(stochastic[1], stochastic[0]) >= 35


def test_the_reference_field_renders_the_original_codes_frames():
    """ReferenceField's pictures are the original OpenLRM code's (the fixture's RNG-free frames), at parity's
    tolerance; and FastField's stay close to them."""
    import json
    folder = REFCHECK / "refcheck-tiny-1.1" / "out"
    planes = torch.from_numpy(np.load(folder / "intermediates.npz")["planes"])
    frames = dict(np.load(folder / "frames.npz"))
    size = json.loads((folder / "meta.json").read_text())["render_size"]
    out = ReferenceField(model(), planes).render(torch.from_numpy(frames["cameras"]), size)
    for key in ("rgb", "depth", "weight"):
        assert np.abs(out[key].numpy() - frames[f"{key}_det"]).max() <= 1e-3, key
    fast = FastField(model(), planes, resolution=128).render(torch.from_numpy(frames["cameras"]), size)
    assert psnr(fast["rgb"], torch.from_numpy(frames["rgb_det"])) >= 30


def test_projection_inverts_the_rays():
    cameras = torch.cat([lrm.orbit_cameras(4), lrm.orbit_cameras(3, 1.5, 0.3)])
    origins, dirs = lrm.get_rays(cameras, 16)
    idx = torch.arange(16 * 16)
    uv, z = project(origins + 1.3 * dirs, conditioning_cameras(cameras))  # [M, R, 2], [M, R]
    rows, cols = uv[..., 1] * 16 - 0.5, uv[..., 0] * 16 - 0.5
    assert (rows - idx // 16).abs().max() < 1e-3 and (cols - idx % 16).abs().max() < 1e-3
    # depth along the optical axis: 1.3 times the cosine of each ray's angle to the axis
    axis = -cameras[:, :16].view(-1, 4, 4)[:, :3, 2]  # OpenGL cameras look along -z
    assert torch.allclose(z, 1.3 * (dirs * axis[:, None]).sum(-1), atol=1e-5)


def test_hit_mask_keeps_every_ray_that_sees_something_and_skips_the_rest():
    planes = fitted_planes()
    fast = FastField(model(), planes)
    cameras = lrm.orbit_cameras(4)
    ref = ReferenceField(model(), planes).render(cameras, 48)
    for camera, weight in zip(cameras, ref["weight"]):
        mask = hit_mask(fast, camera, 48)
        assert weight.reshape(-1)[~mask].max() < 1e-3  # nothing visible is left out
        assert mask.float().mean() < 0.8  # and the background is skipped
    # a camera inside the occupied region: everything is a hit
    inside = lrm.orbit_cameras(1, 0.05, 0.0)[0]
    assert hit_mask(fast, inside, 8).all()


def test_fast_renderer_looks_up_colours_only_near_surfaces():
    planes = fitted_planes()
    fast = FastField(model(), planes, kernel=False)  # the tensor path (the compiled one has the same rule)
    counts = {"density": 0, "color": 0}
    lookup = FieldCache.lookup

    def counting(volume, xyz):
        counts["density" if volume.shape[1] == 1 else "color"] += len(xyz)
        return lookup(volume, xyz)
    fast.cache.lookup = counting
    fast.render(lrm.orbit_cameras(1), 48, samples_per_ray=16)
    assert 0 < counts["density"] < 0.8 * 48 * 48 * 16  # background rays are not marched
    assert 0 < counts["color"] < 0.5 * counts["density"]


def test_fast_mesh_matches_reference():
    from scipy.spatial import cKDTree
    planes = fitted_planes()
    resolution = 96
    ref = extract_mesh(ReferenceField(model(), planes), resolution, 3.0)
    fast = extract_mesh(FastField(model(), planes), resolution, 3.0)
    voxel = 2 / (resolution - 1)
    d = 0.5 * (cKDTree(ref.vertices).query(fast.vertices)[0].mean() + cKDTree(fast.vertices).query(ref.vertices)[0].mean())
    assert d / voxel <= 0.5
    assert abs(len(fast.vertices) - len(ref.vertices)) <= 0.03 * len(ref.vertices)
    assert np.abs(fast.visual.vertex_colors.astype(int).mean(0) - ref.visual.vertex_colors.astype(int).mean(0)).max() < 3


def test_a_field_takes_one_plane_set():
    planes = fitted_planes()
    for kind in (FastField, ReferenceField):
        with pytest.raises(ValueError, match="one plane set"):
            kind(model(), planes.expand(2, -1, -1, -1, -1))


def test_compiled_renderer_matches_the_tensor_path():
    """lrm/raymarch.py's per-ray loop and the tensor path: the same samples, lookups and compositing."""
    from lrm import raymarch
    assert raymarch.available()
    planes = fitted_planes()
    cameras = lrm.orbit_cameras(3)
    compiled, tensors = FastField(model(), planes), FastField(model(), planes, kernel=False)
    a, b = compiled.render(cameras, 48), tensors.render(cameras, 48)
    assert psnr(a["rgb"], b["rgb"]) >= 80 and (a["weight"] - b["weight"]).abs().max() < 1e-3
    hit = b["weight"] > 0.5
    assert (a["depth"][hit] - b["depth"][hit]).abs().max() < 1e-3
    draws = [f.render(cameras[:1], 48, deterministic=False, generator=torch.Generator().manual_seed(5))["rgb"]
             for f in (compiled, tensors)]
    assert psnr(*draws) >= 80


def test_thin_parts_survive_the_fast_path():
    """A plate 0.02 thick and a rod 0.04 across (1.3 and 2.5 voxels of the cache; the coarse samples, ~0.05 apart,
    straddle them): fitted under the small architecture's decoder, the fast frames keep them."""
    import math

    import bench
    from lrm.camera import look_at_origin, render_cameras, sphere_positions
    from lrm.train.shapes import Primitive, Shape

    def part(kind, size, centre, colour):
        c = torch.tensor([colour, colour], dtype=torch.float32)
        return Primitive(kind, size, torch.eye(3), torch.tensor(centre, dtype=torch.float32), c)
    shape = Shape([part("box", (0.5, 0.5, 0.01), (0, 0, 0), (0.8, 0.2, 0.2)),
                   part("cylinder", (0.02, 0.45, 0), (0.3, 0.3, 0.2), (0.2, 0.3, 0.8))])
    small = bench.build_model("small", "cpu")
    planes = fit_planes(small, shape, steps=300, points=8192)
    views = [(0, 3), (40, 8), (90, 15), (150, 30)]  # grazing the plate, then from above
    cameras = render_cameras(look_at_origin(sphere_positions([math.radians(a) for a, _ in views],
                                                             [math.radians(e) for _, e in views], 2.0)))
    ref = ReferenceField(small, planes).render(cameras, 64)
    fast = FastField(small, planes).render(cameras, 64)
    assert ref["weight"].mean() > 0.01  # the thin parts are there to be seen
    assert psnr(fast["rgb"], ref["rgb"]) >= 40
    # the 128³ cache's trilinear interpolation thins them a little (finer caches: FastField(resolution=...))
    assert (fast["weight"] - ref["weight"]).abs().mean() < 0.15 * ref["weight"].mean()

