"""The fast path against the faithful one: same pictures and mesh, far fewer field queries."""

import functools

import numpy as np
import pytest
import torch

import lrm
from lrm.fast import FastField, ProjectedField, fine_density_grid, render_view_fast
from lrm.mesh import density_grid, extract_mesh
from lrm.train.data import make_shape
from lrm.train.fit import fit_planes

from conftest import REFCHECK

TINY = REFCHECK / "refcheck-tiny-1.1" / "model"


@functools.lru_cache(maxsize=None)
def model():
    return lrm.load_model(TINY)


@functools.lru_cache(maxsize=None)
def fitted_planes():
    """A realistic field: planes fitted to a procedural object (empty space around a solid, coloured object)."""
    return fit_planes(model(), make_shape(5), steps=300, points=4096)


def psnr(a, b):
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean().clamp_min(1e-12)))


def test_projected_field_equals_the_decoder():
    planes = fitted_planes()
    xyz = torch.rand(1, 3000, 3) * 2.2 - 1.1  # also outside the box: zero padding must agree
    with torch.no_grad():
        raw, rgb = model().synthesizer(planes, xyz)
        raw2, rgb2 = ProjectedField(model(), planes)(xyz[0])
    assert (raw[0] - raw2).abs().max() < 1e-4 and (rgb[0] - rgb2).abs().max() < 1e-5


def test_fast_frames_match_reference_on_the_fixture_field():
    """A random fixture field has density everywhere: nothing is skipped and the frames agree to rounding."""
    planes = torch.from_numpy(np.load(REFCHECK / "refcheck-tiny-1.1" / "out" / "intermediates.npz")["planes"])
    cameras = lrm.orbit_cameras(6)[None]
    with torch.no_grad():
        ref = model().render(planes, cameras, 24, mode="reference")
        fast = model().render(planes, cameras, 24, mode="fast")
    for key in ("rgb", "depth", "weight"):
        assert (ref[key] - fast[key]).abs().max() < 1e-3, key  # the tolerance of the deterministic frames


def test_fast_frames_match_reference_on_a_realistic_field():
    planes = fitted_planes()
    cameras = lrm.orbit_cameras(5)[None]
    with torch.no_grad():
        ref = model().render(planes, cameras, 48, mode="reference")
        fast = model().render(planes, cameras, 48, mode="fast")
        stochastic = [model().render(planes, cameras[:, :1], 48, deterministic=False, mode=mode,
                                     generator=torch.Generator().manual_seed(3))["rgb"] for mode in ("reference", "fast")]
    assert ref["weight"].mean() > 0.05  # there is an object in view
    assert psnr(fast["rgb"], ref["rgb"]) >= 35
    assert (fast["weight"] - ref["weight"]).abs().mean() < 5e-3
    assert psnr(stochastic[1], stochastic[0]) >= 35


def test_fast_renderer_skips_most_samples():
    planes = fitted_planes()
    fast = FastField(model(), planes)
    calls = []
    original = fast.field.query
    fast.field.query = lambda xyz, chunk=2 ** 18: calls.append(len(xyz)) or original(xyz, chunk)
    origins, dirs = lrm.get_rays(lrm.orbit_cameras(3)[:1], 48)
    with torch.no_grad():
        render_view_fast(fast, origins[0], dirs[0], 8, 8)
    assert 0 < sum(calls) < 0.6 * origins.shape[1] * 16  # the reference queries all 16 samples of every ray


def test_fast_mesh_matches_reference():
    from scipy.spatial import cKDTree
    planes = fitted_planes()
    resolution = 96
    ref = extract_mesh(model(), planes, resolution, 3.0, mode="reference")
    fast = extract_mesh(model(), planes, resolution, 3.0, mode="fast")
    voxel = 2 / (resolution - 1)
    d = 0.5 * (cKDTree(ref.vertices).query(fast.vertices)[0].mean() + cKDTree(fast.vertices).query(ref.vertices)[0].mean())
    assert d / voxel <= 1.0
    assert abs(len(fast.vertices) - len(ref.vertices)) <= 0.02 * len(ref.vertices)
    # and only part of the fine grid was evaluated: the rest is the upsampled coarse grid
    ff = FastField(model(), planes)
    grid = fine_density_grid(ff, resolution, 3.0)
    with torch.no_grad():
        exact = density_grid(model(), planes, resolution)
    matches = torch.isclose(grid, exact.float(), rtol=1e-3, atol=1e-4).float().mean()
    assert 0.02 < matches < 0.9


def test_modes_are_validated():
    planes = fitted_planes()
    with pytest.raises(ValueError, match="mode"):
        model().render(planes, lrm.orbit_cameras(1)[None], 8, mode="quick")
    with pytest.raises(ValueError, match="mode"):
        extract_mesh(model(), planes, 8, mode="quick")
