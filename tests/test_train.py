"""Training side: deterministic procedural data, a smoke training run that learns and reloads, resume, DDP."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import lrm
from lrm.train.data import DataSpec, ShapeDataset, input_image, make_shape, point_targets, ray_targets
from lrm.train.shapes import KINDS, Shape
from lrm.train.trainer import PRESETS, TrainConfig, train


def test_shapes_are_deterministic_and_normalised():
    for seed in (0, 7, 123):
        a, b = make_shape(seed), make_shape(seed)
        assert a.kind == b.kind and torch.equal(a.offset, b.offset) and a.scale == b.scale
        pts = torch.rand(2000, 3) * 2 - 1
        assert torch.equal(a.sdf(pts), b.sdf(pts)) and torch.equal(a.color(pts), b.color(pts))
        # normalised: bounding box centred, longer image-plane side (x or z) 1.5, depth at most 1.9
        axis = torch.linspace(-1, 1, 64)
        grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        inside = grid[a.sdf(grid) < 0]
        lo, hi = inside.min(0).values, inside.max(0).values
        size = hi - lo
        assert max(size[0], size[2]) == pytest.approx(1.5, abs=0.1) or size[1] == pytest.approx(1.9, abs=0.1)
        assert size.max() < 2.0 and ((lo + hi) / 2).abs().max() < 0.08
    assert make_shape(1).kind != make_shape(2).kind or not torch.equal(make_shape(1).offset, make_shape(2).offset)
    for kind in KINDS:
        assert Shape.random(5, kind).kind == kind


def test_views_and_targets_are_deterministic():
    spec = DataSpec(image_size=64, render_size=80)
    shape = make_shape(11)
    assert np.array_equal(input_image(shape, spec), input_image(make_shape(11), spec))
    image = input_image(shape, spec)
    assert image.shape == (64, 64, 3) and image.min() < 200 and (image == 255).all(-1).mean() > 0.2  # object on white
    t1 = point_targets(shape, spec, np.random.default_rng(4))
    t2 = point_targets(shape, spec, np.random.default_rng(4))
    assert all(torch.equal(t1[k], t2[k]) for k in t1)
    inside = t1["sdf"] < 0
    assert 0.05 < inside.float().mean() < 0.8  # both sides of the surface are sampled
    r = ray_targets(shape, spec, np.random.default_rng(4))
    assert r["ray_rgb"].shape == (spec.rays, 3) and (r["ray_rgb"] < 0.99).any()  # some rays hit the object


def test_dataset_items():
    spec = DataSpec(image_size=64, render_size=80, uniform_points=100, surface_points=100, rays=16)
    images = np.stack([input_image(make_shape(s), spec) for s in range(2)])
    item = ShapeDataset([0, 1], images, spec)[1]
    assert item["image"].shape == (3, 64, 64) and item["xyz"].shape == (200, 3)
    assert torch.equal(item["camera"], lrm.source_camera()[0])


def _log(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_smoke_training_learns_and_reloads(tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "run"
    cfg = TrainConfig(preset="tiny", out=str(out), objects=24, steps=60, batch=4, lr=3e-3, warmup=5, workers=0,
                      log_every=1, save_every_minutes=0)
    train(cfg)
    rows = _log(out)
    first, last = np.mean([r["total"] for r in rows[:5]]), np.mean([r["total"] for r in rows[-5:]])
    assert last < 0.8 * first, (first, last)
    model = lrm.load_model(out)  # the release format: config.json + model.safetensors
    assert model.release == "1.1" and model.config.triplane_lift
    assert json.loads((out / "config.json").read_text())["triplane_lift"] is True
    image = torch.full((1, 3, 64, 64), 0.5)
    assert model.forward_planes(image, lrm.source_camera()).shape == (1, 3, 8, 16, 16)

    # resume: the step counter and the optimizer carry on; log rows written after the checkpoint by a run that then
    # died (simulated) are dropped, so every step appears once
    with open(out / "train_log.jsonl", "a") as log:
        log.write(json.dumps({**rows[-1], "step": 65, "total": -1.0}) + "\n")
    cfg.steps = 70
    train(cfg)
    rows = _log(out)
    steps = [r["step"] for r in rows]
    assert steps[-1] == 70 and 61 in steps and steps == sorted(set(steps))
    assert all(r["total"] >= 0 for r in rows)


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    """`torchrun --nproc_per_node 2 -m lrm.train` on the gloo backend."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "lrm.train", "--preset", "tiny", "--out", str(tmp_path / "ddp"), "--objects", "16", "--steps", "4",
           "--batch", "2", "--workers", "0", "--log-every", "1", "--save-every-minutes", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    rows = _log(tmp_path / "ddp")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # only rank 0 logs
    assert lrm.load_model(tmp_path / "ddp").config.triplane_lift


def test_color_lift_puts_image_colours_where_the_canonical_camera_sees_them():
    from lrm.lift import ColorLift
    lift = ColorLift(triplane_dim=3, high_res=16)
    with torch.no_grad():
        lift.proj.weight.copy_(torch.eye(3))
        lift.proj.bias.zero_()
    image = torch.ones(1, 3, 64, 64)
    image[:, 1:, :32, :32] = 0  # red top-left quarter: seen at x < 0 (image left), z > 0 (image top)
    planes = lift(image, lrm.source_camera())  # (1, 3, 3, 16, 16): plane 1 is (x, z), rows follow z
    front = planes[0, 1]
    assert front.shape == (3, 16, 16)
    red = (front[1] < 0.5) & (front[0] > 0.5)
    assert red[12:, :4].all() and not red[:8].any() and not red[:, 12:].any()


def test_density_calibration_keeps_the_surface():
    from lrm.train.calibrate import sharpen
    from lrm.train.trainer import OCCUPANCY_OFFSET
    torch.manual_seed(0)
    config = lrm.LRMConfig.from_dict(PRESETS["tiny"]["model"])
    model = lrm.LRM(config).eval()
    sharp = lrm.LRM(sharpen(config, 4.0)).eval()
    sharp.load_state_dict(model.state_dict())
    planes = torch.randn(1, 3, config.triplane_dim, 16, 16)
    xyz = torch.rand(1, 500, 3) * 2 - 1
    with torch.no_grad():
        raw, rgb = model.synthesizer(planes, xyz)
        raw4, rgb4 = sharp.synthesizer(planes, xyz)
    assert torch.allclose(raw4, OCCUPANCY_OFFSET + 4 * (raw - OCCUPANCY_OFFSET), atol=1e-4) and torch.equal(rgb, rgb4)
    assert torch.equal(raw > OCCUPANCY_OFFSET, raw4 > OCCUPANCY_OFFSET)  # the density-3.0 surface does not move
    saved = json.loads(json.dumps(sharp.config.to_dict()))
    assert saved["density_scale"] == 40.0 and lrm.LRMConfig.from_dict(saved) == sharp.config
