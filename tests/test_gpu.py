"""The CUDA path against the reference fixtures and against the CPU (skipped without a CUDA device).

Run where a GPU is lent: `python -m pytest -m gpu`. The tolerances are the CPU parity suite's; TF32 is turned off for
the comparison (PyTorch enables it for cuDNN convolutions by default, which is ~1e-3 relative, a caller's choice).
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import lrm
from lrm.field import density_grid

from conftest import REFCHECK, psnr

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(autouse=True)
def exact_fp32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def rel_l2(a, b) -> float:
    a, b = torch.as_tensor(a).double().cpu(), torch.as_tensor(b).double().cpu()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", ["refcheck-tiny-1.1", "refcheck-tiny-1.0"])
def test_cuda_matches_the_reference(name):
    folder = REFCHECK / name / "out"
    meta = json.loads((folder / "meta.json").read_text())
    ref = dict(np.load(folder / "intermediates.npz"))
    frames = dict(np.load(folder / "frames.npz"))
    model = lrm.load_model(REFCHECK / name / "model", device="cuda")
    x = lrm.image_to_tensor(Image.open(REFCHECK / "inputs" / "disc_rgba.png"), meta["source_size"]).cuda()
    with torch.inference_mode():
        planes = model.forward_planes(x, lrm.source_camera(meta["source_cam_dist"]).cuda())
    assert planes.is_cuda and rel_l2(planes, ref["planes"]) <= 1e-4
    planes = torch.from_numpy(ref["planes"]).cuda()
    with torch.inference_mode():
        out = model.render(planes, torch.from_numpy(frames["cameras"]).cuda()[None], meta["render_size"])
        grid = density_grid(model, planes, 32)
    for key in ("rgb", "depth", "weight"):
        assert np.abs(out[key][0].cpu().numpy() - frames[f"{key}_det"]).max() <= 1e-3, key
    with torch.inference_mode():
        cpu_grid = density_grid(lrm.load_model(REFCHECK / name / "model"), planes.cpu(), 32)
    assert rel_l2(grid, cpu_grid) <= 1e-4


@pytest.fixture(scope="module")
def demo_input():
    """The demo model on the GPU and the three_parts example's image tensor there."""
    model = lrm.load_model(lrm.DEMO_MODEL, device="cuda")
    image = lrm.preprocess(REFCHECK.parent.parent.parent / "examples" / "three_parts.png",
                           foreground_ratio=model.infer_defaults.foreground_ratio)
    return model, lrm.image_to_tensor(image, model.infer_defaults.source_size).cuda()


def test_cuda_fast_field_matches_the_reference_field(demo_input):
    model, x = demo_input
    with torch.inference_mode():
        planes = model.forward_planes(x, lrm.source_camera().cuda())
    fast, ref = lrm.FastField(model, planes), lrm.ReferenceField(model, planes)
    cameras = lrm.orbit_cameras(4)
    a, b = fast.render(cameras, 96), ref.render(cameras, 96)
    assert a["rgb"].is_cuda and b["weight"].mean() > 0.02
    assert psnr(a["rgb"], b["rgb"]) >= 35  # 39.9 dB on the CPU
    meshes = [lrm.extract_mesh(f, 96) for f in (fast, ref)]
    assert abs(len(meshes[0].vertices) - len(meshes[1].vertices)) <= 0.03 * len(meshes[1].vertices)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_half_precision_planes(precision, demo_input):
    """Autocast on the GPU's tensor cores: planes within 3 % of fp32, the same pictures to >= 35 dB."""
    model, x = demo_input
    with torch.inference_mode():
        exact = model.forward_planes(x, lrm.source_camera().cuda())
        half = model.forward_planes(x, lrm.source_camera().cuda(), precision=precision)
    assert half.dtype == torch.float32 and 0 < rel_l2(half, exact) < 0.03
    cameras = lrm.orbit_cameras(3)
    frames = [lrm.ReferenceField(model, p).render(cameras, 64)["rgb"] for p in (exact, half)]
    assert psnr(frames[1], frames[0]) >= 35
