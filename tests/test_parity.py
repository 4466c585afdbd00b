"""Numeric parity with the original OpenLRM code, on the four refcheck fixtures and both inputs.

Tolerances are those the fixtures were made for (tests/fixtures/refcheck/README.md); they are never loosened.
"""

import functools
import json

import numpy as np
import pytest
import torch
from PIL import Image

import lrm
from lrm.field import ReferenceField, density_grid
from lrm.mesh import extract_mesh

from conftest import REFCHECK, REFCHECK_MODELS

CASES = [(m, out, img) for m in REFCHECK_MODELS for out, img in (("out", "disc_rgba.png"), ("out_rgb", "disc_rgb.png"))]
IDS = [f"{m}-{out}" for m, out, _ in CASES]


@functools.lru_cache(maxsize=None)
def model(name):
    return lrm.load_model(REFCHECK / name / "model")


@functools.lru_cache(maxsize=None)
def case(name, out):
    folder = REFCHECK / name / out
    data = {k: dict(np.load(folder / f"{k}.npz")) for k in ("intermediates", "points", "frames", "mesh")}
    data["grid_sigma"] = np.load(folder / "grid_sigma.npy")
    data["meta"] = json.loads((folder / "meta.json").read_text())
    return data


def rel_l2(a, b) -> float:
    a, b = torch.as_tensor(np.asarray(a), dtype=torch.float64), torch.as_tensor(np.asarray(b), dtype=torch.float64)
    return ((a - b).norm() / b.norm()).item()


def max_abs(a, b) -> float:
    return np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max()


@pytest.mark.parametrize("name,out,image", CASES, ids=IDS)
def test_input_and_encoder(name, out, image):
    ref = case(name, out)
    x = lrm.image_to_tensor(Image.open(REFCHECK / "inputs" / image), ref["meta"]["source_size"])
    assert max_abs(x, ref["intermediates"]["image"]) <= 1e-5
    with torch.no_grad():
        assert rel_l2(model(name).encoder(x), ref["intermediates"]["encoder_feats"]) <= 1e-4


@pytest.mark.parametrize("name,out,image", CASES, ids=IDS)
def test_camera_embedding_and_planes(name, out, image):
    ref = case(name, out)
    cam = lrm.source_camera(ref["meta"]["source_cam_dist"])
    assert max_abs(cam, ref["intermediates"]["source_camera"]) == 0
    x = lrm.image_to_tensor(Image.open(REFCHECK / "inputs" / image), ref["meta"]["source_size"])
    with torch.no_grad():
        assert rel_l2(model(name).camera_embedder(cam), ref["intermediates"]["camera_embedding"]) <= 1e-4
        planes = model(name).forward_planes(x, cam)
    assert planes.shape == ref["intermediates"]["planes"].shape
    assert rel_l2(planes, ref["intermediates"]["planes"]) <= 1e-4


@pytest.mark.parametrize("name,out,image", CASES, ids=IDS)
def test_point_queries_and_grid(name, out, image):
    ref = case(name, out)
    planes = torch.from_numpy(ref["intermediates"]["planes"])
    with torch.no_grad():
        sigma, rgb = model(name).query_points(planes, torch.from_numpy(ref["points"]["points"])[None])
        grid = density_grid(model(name), planes, ref["grid_sigma"].shape[0], chunk=5000).numpy()
    assert rel_l2(sigma[0], ref["points"]["sigma"]) <= 1e-4
    assert rel_l2(rgb[0], ref["points"]["rgb"]) <= 1e-4
    assert rel_l2(grid, ref["grid_sigma"]) <= 1e-4
    threshold = ref["meta"]["mesh_threshold"]
    assert ((grid > threshold) != (ref["grid_sigma"] > threshold)).mean() <= 1e-4


@pytest.mark.parametrize("name,out,image", CASES, ids=IDS)
def test_cameras_and_rays(name, out, image):
    ref = case(name, out)["frames"]
    release = model(name).release
    cameras = lrm.orbit_cameras(case(name, out)["meta"]["render_views"], endpoint=release == "1.1")
    assert max_abs(cameras[ref["frame_indices"]], ref["cameras"]) <= 1e-6
    origins, dirs = lrm.get_rays(torch.from_numpy(ref["cameras"]), case(name, out)["meta"]["render_size"])
    assert max_abs(origins, ref["ray_origins"]) <= 1e-5
    assert max_abs(dirs, ref["ray_dirs"]) <= 1e-5


@pytest.mark.parametrize("name,out,image", CASES, ids=IDS)
def test_deterministic_frames(name, out, image):
    ref = case(name, out)
    planes = torch.from_numpy(ref["intermediates"]["planes"])
    cameras = torch.from_numpy(ref["frames"]["cameras"])[None]
    with torch.no_grad():
        # A small chunk forces several ray chunks per view: chunking must not change the pictures.
        frames = model(name).render(planes, cameras, ref["meta"]["render_size"], chunk=4096)
    for key in ("rgb", "depth", "weight"):
        assert max_abs(frames[key][0], ref["frames"][f"{key}_det"]) <= 1e-3, key


@pytest.mark.parametrize("name,out,image", CASES[:2] + CASES[4:6], ids=IDS[:2] + IDS[4:6])
def test_stochastic_frames_follow_the_reference_rng(name, out, image):
    """Informational in the reference doc; we draw the same random numbers in the same order, so they match too."""
    ref = case(name, out)
    planes = torch.from_numpy(ref["intermediates"]["planes"])
    cameras = torch.from_numpy(ref["frames"]["cameras"])
    frames = []
    with torch.no_grad():
        for camera in cameras:
            generator = torch.Generator().manual_seed(ref["meta"]["render_seed"])
            frames.append(model(name).render(planes, camera[None, None], ref["meta"]["render_size"],
                                             deterministic=False, generator=generator)["rgb"][0, 0])
    assert max_abs(torch.stack(frames), ref["frames"]["rgb_seeded"]) <= 1e-3
    # and the stochastic sampler really is stochastic: another seed gives other pictures
    with torch.no_grad():
        other = model(name).render(planes, cameras[None, :1], ref["meta"]["render_size"], deterministic=False,
                                   generator=torch.Generator().manual_seed(7))["rgb"][0, 0]
    assert max_abs(other, frames[0]) > 1e-3


@pytest.mark.parametrize("name,out,image", CASES, ids=IDS)
def test_mesh(name, out, image):
    from scipy.spatial import cKDTree
    ref = case(name, out)
    planes = torch.from_numpy(ref["intermediates"]["planes"])
    mesh = extract_mesh(ReferenceField(model(name), planes), ref["meta"]["mesh_size"], float(ref["mesh"]["threshold"]))
    ref_v = ref["mesh"]["vertices"]
    assert abs(len(mesh.vertices) - len(ref_v)) <= 1e-3 * len(ref_v)
    dist, idx = cKDTree(ref_v).query(mesh.vertices)
    assert dist.mean() <= 1e-4
    colour_diff = np.abs(mesh.visual.vertex_colors.astype(int) - ref["mesh"]["vertex_colors"][idx].astype(int))
    assert colour_diff.mean() <= 1
