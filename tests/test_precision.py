"""Autocast for the planes (`precision="bf16"/"fp16"`): checked here on the CPU against fp32.

A GPU runs the same code with tensor cores; the parity criterion is the same (see bench.py for GPU timings).
"""

import pytest
import torch

import lrm
from lrm.hub import DEMO_MODEL
from lrm.field import density_grid
from lrm.train.data import DataSpec, input_image, make_shape

from conftest import psnr

DEMO = DEMO_MODEL


@pytest.fixture(scope="module")
def planes():
    # autocast itself, whatever this CPU has (forward_planes runs fp32 on CPUs without bf16 instructions)
    saved, lrm.model.cpu_has = lrm.model.cpu_has, lambda precision: True
    try:
        model = lrm.load_model(DEMO)
        spec = DataSpec(image_size=model.infer_defaults.source_size)
        image = torch.from_numpy(input_image(make_shape(10_000_123), spec)).permute(2, 0, 1)[None].float() / 255
        with torch.inference_mode():
            out = {p: model.forward_planes(image, lrm.source_camera(), precision=p) for p in ("fp32", "bf16", "fp16")}
    finally:
        lrm.model.cpu_has = saved
    return model, out


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_planes_give_the_same_pictures_and_mesh(planes, precision):
    model, out = planes
    exact, half = out["fp32"], out[precision]
    assert half.dtype == exact.dtype == torch.float32
    assert 0 < float((half - exact).norm() / exact.norm()) < 0.03  # autocast ran, and stayed close
    assert not torch.equal(out["bf16"], out["fp16"])  # each its own arithmetic
    cameras = lrm.orbit_cameras(3)[None]
    with torch.inference_mode():
        frames = [model.render(p, cameras, 64)["rgb"] for p in (exact, half)]
        grids = [density_grid(model, p, 48) > 3.0 for p in (exact, half)]
    assert psnr(frames[1], frames[0]) >= 35
    iou = float((grids[0] & grids[1]).sum() / (grids[0] | grids[1]).sum())
    assert iou >= 0.95


def test_bf16_runs_fp32_with_a_warning_on_cpus_without_bf16_instructions(planes, monkeypatch):
    model, out = planes
    monkeypatch.setattr(lrm.model, "cpu_has", lambda precision: False)
    spec = DataSpec(image_size=model.infer_defaults.source_size)
    image = torch.from_numpy(input_image(make_shape(10_000_123), spec)).permute(2, 0, 1)[None].float() / 255
    with pytest.warns(RuntimeWarning, match="runs in fp32"), torch.inference_mode():
        planes = model.forward_planes(image, lrm.source_camera(), precision="bf16")
    assert torch.equal(planes, out["fp32"])


def test_unknown_precision_is_refused(planes):
    model, _ = planes
    with pytest.raises(ValueError, match="precision"):
        model.forward_planes(torch.zeros(1, 3, 32, 32), lrm.source_camera(), precision="int8")


def test_a_job_in_fp16(planes, tmp_path):
    """precision="fp16" through the whole job (fp32 with a warning on a CPU without fp16 matrix instructions): the
    same object as in fp32, to a voxel."""
    import warnings
    from pathlib import Path
    model, _ = planes
    example = Path(__file__).parents[1] / "examples" / "cone.png"
    meshes = {}
    for precision in ("fp32", "fp16"):
        job = lrm.JobOptions(precision=precision, mesh_resolution=48, n_views=2, video_size=32, texture_size=0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = lrm.reconstruct(model, example, tmp_path / precision, job, name="cone")
        ran_fp32 = any("runs in fp32" in str(w.message) for w in caught)
        assert ran_fp32 == (precision == "fp16" and not lrm.model.cpu_has("fp16"))
        assert set(result.files) >= {"glb", "ply", "mp4"}
        meshes[precision] = result.mesh
    assert abs(meshes["fp16"].bounds - meshes["fp32"].bounds).max() <= 2 / 47
    assert abs(len(meshes["fp16"].faces) - len(meshes["fp32"].faces)) <= 0.05 * len(meshes["fp32"].faces)
