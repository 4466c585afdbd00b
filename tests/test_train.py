"""Training side: deterministic procedural data, a smoke training run that learns and reloads, resume, DDP."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import lrm
import lrm.train.shapes
from lrm.camera import project
from lrm.field import grid_coordinates
from lrm.train.data import (FOREGROUND_RATIO, DataSpec, ShapeDataset, input_image, make_shape, placed_shape,
                            placement, placements_path, point_targets, ray_targets)
from lrm.train.shapes import KINDS, Shape
from lrm.train.trainer import PRESETS, TrainConfig, train


def test_shapes_are_deterministic_and_framed():
    spec = DataSpec(image_size=64)
    _, camera = lrm.train.shapes.source_view_camera(2.0)
    for seed in (0, 7, 123):
        a, b = make_shape(seed), make_shape(seed)
        assert a.kind == b.kind and torch.equal(a.offset, b.offset) and a.scale == b.scale
        pts = torch.rand(2000, 3) * 2 - 1
        assert torch.equal(a.sdf(pts), b.sdf(pts)) and torch.equal(a.color(pts), b.color(pts))
        # inside the box, depth centred on the bounding box and at most 1.9
        grid = grid_coordinates(64, 0, 64 ** 3)
        inside = grid[a.sdf(grid) < 0]
        lo, hi = inside.min(0).values, inside.max(0).values
        assert (hi - lo)[1] < 1.95 and inside.abs().max() < 1.0 and abs(float(lo[1] + hi[1])) < 0.08
        # framed: the canonical view is what lrm.preprocess makes of it at FOREGROUND_RATIO (centred, longer side)
        _, alpha = a.render(camera[None], 128)
        rows, cols = torch.nonzero(alpha[0, 0] > 0.5, as_tuple=True)
        extent = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1).item() / 128
        assert extent == pytest.approx(FOREGROUND_RATIO, abs=0.03)
        assert abs((rows.max() + rows.min() + 1).item() / 256 - 0.5) < 0.02
        assert abs((cols.max() + cols.min() + 1).item() / 256 - 0.5) < 0.02
        # and the input image is that view: the conditioning camera projects the object onto its pixels
        image = input_image(a, spec)
        surface = inside[a.sdf(inside) > -0.05]
        uv = project(surface[None], lrm.source_camera())[0][0]
        px = (uv * spec.image_size).long().clamp(0, spec.image_size - 1)
        assert (image[px[:, 1], px[:, 0]] < 250).any(-1).mean() > 0.97
    assert make_shape(1).kind != make_shape(2).kind or not torch.equal(make_shape(1).offset, make_shape(2).offset)
    for kind in KINDS:
        assert Shape.random(5, kind).kind == kind


def test_views_and_targets_are_deterministic():
    spec = DataSpec(image_size=64)
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
    spec = DataSpec(image_size=64, uniform_points=100, surface_points=100, rays=16)
    images = np.stack([input_image(make_shape(s), spec) for s in range(2)])
    item = ShapeDataset([0, 1], images, spec)[1]
    assert item["image"].shape == (3, 64, 64) and item["xyz"].shape == (200, 3)
    assert torch.equal(item["camera"], lrm.source_camera()[0])


def test_stored_placements_rebuild_the_same_objects():
    """Training items skip the normalisation's grid search with the placement stored beside the image cache."""
    spec = DataSpec(image_size=64, uniform_points=64, surface_points=64, rays=8)
    seeds = [3, 8, 21]
    places = np.stack([placement(make_shape(s)) for s in seeds])
    pts = torch.rand(500, 3) * 2 - 1
    for seed, place in zip(seeds, places):
        a, b = make_shape(seed), placed_shape(seed, place)
        assert a.scale == b.scale and torch.equal(a.offset, b.offset)
        assert torch.equal(a.sdf(pts), b.sdf(pts)) and torch.equal(a.color(pts), b.color(pts))
    images = np.zeros((3, 64, 64, 3), np.uint8)
    with_places = ShapeDataset(seeds, images, spec, seed=5, placements=places)[2]
    without = ShapeDataset(seeds, images, spec, seed=5)[2]
    assert all(torch.equal(with_places[k], without[k]) for k in without)


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
    cache = out / "views-24-64.npy"
    assert np.load(placements_path(cache)).shape == (24, 4) and np.load(cache).shape == (24, 64, 64, 3)
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


def test_training_options_bf16_no_render_and_overrides(tmp_path):
    """bf16 autocast, the render loss switched off (and not computed), model and data overrides from the CLI."""
    from lrm.train.__main__ import main
    out = tmp_path / "opts"
    main(["--preset", "tiny", "--out", str(out), "--objects", "8", "--steps", "3", "--batch", "2", "--workers", "0",
          "--log-every", "1", "--save-every-minutes", "0", "--precision", "bf16", "--weights", '{"render": 0}',
          "--model", '{"transformer_layers": 2, "encoder_model_name": "custom-dinov2-s64-p16-d32-l1-h2-r0-c4"}',
          "--data", '{"uniform_points": 64, "surface_points": 32}'])
    rows = _log(out)
    assert [r["step"] for r in rows] == [1, 2, 3] and all("render" not in r for r in rows)
    assert all(np.isfinite(r["total"]) and r["occupancy"] > 0 for r in rows)
    model = lrm.load_model(out)
    assert model.config.transformer_layers == 2 and model.config.triplane_lift  # the rest of the preset stays
    assert model.encoder.model.patch_embed.stem is not None
    state = torch.load(out / "trainer_state.pt", weights_only=True)
    assert state["train_config"]["precision"] == "bf16" and state["train_config"]["data"]["surface_points"] == 32


def test_unknown_override_keys_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown keys \\['point'\\]"):
        train(TrainConfig(preset="tiny", out=str(tmp_path / "x"), data={"point": 3}))
    with pytest.raises(ValueError, match="--model: unknown keys"):
        train(TrainConfig(preset="tiny", out=str(tmp_path / "x"), model={"layers": 3}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where no GPU is present")
def test_cuda_training_without_a_gpu_says_what_to_do():
    from lrm.train.trainer import training_device
    with pytest.raises(RuntimeError, match="--device cpu"):
        training_device("cuda")
    assert training_device("cpu") == torch.device("cpu")


def test_encoder_convolutional_stem():
    from lrm.encoder import encoder_spec
    spec = encoder_spec("dinov2", "custom-dinov2-s64-p8-d32-l1-h2-r0-c3", 32)
    assert spec.stem == 3 and spec.patch == 8
    assert encoder_spec("dinov2", "custom-dinov2-s64-p8-d32-l1-h2-r0", 32).stem == 0  # shipped model: unchanged
    with pytest.raises(ValueError, match="patch size 8"):
        encoder_spec("dinov2", "custom-dinov2-s64-p16-d32-l1-h2-r0-c3", 32)
    config = lrm.LRMConfig.from_dict(PRESETS["tiny"]["model"] | {"encoder_model_name":
                                                                 "custom-dinov2-s64-p16-d32-l1-h2-r0-c4"})
    torch.manual_seed(0)
    model = lrm.LRM(config).eval()
    feats = model.encoder(torch.rand(2, 3, 64, 64))
    assert feats.shape == (2, 1 + 4 * 4, 32)  # 64 px / 16 = 4 x 4 patches, as with the plain patch embedding
    names = [n for n, _ in model.named_parameters() if "patch_embed" in n]
    assert any(".stem.0." in n for n in names) and any(".stem.6." in n for n in names)


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


def test_tolerance_table_reads_iou_as_a_surface_error(tmp_path, capsys):
    from lrm.train.eval import GRID, main as eval_main, tolerance_iou
    sdf = grid_coordinates(GRID, 0, GRID ** 3).norm(dim=-1) - 0.5  # a sphere of radius 0.5
    d = 2 / (GRID - 1)
    grown, shrunk = tolerance_iou(sdf, 1.0)
    assert grown == pytest.approx((0.5 / (0.5 + d)) ** 3, abs=0.01)  # volume ratio of the nested spheres
    assert shrunk == pytest.approx(((0.5 - d) / 0.5) ** 3, abs=0.01)
    assert eval_main(["--tolerance", "--per-kind", "1", "--unions", "1", "--json", str(tmp_path / "t.json")]) == 0
    summary = json.loads((tmp_path / "t.json").read_text())["tolerance"]["summary"]
    assert summary["all"]["n"] == 8 and set(summary) == {"all", "union", *KINDS}
    worse = [summary["all"][f"grown {v}"] for v in ("0.5", "1", "2", "3")]
    assert worse == sorted(worse, reverse=True) and 0.3 < worse[-1] < worse[0] < 1
    assert "±2" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        eval_main([])


def test_error_breakdown_places_each_error_along_the_input_rays():
    from lrm.train.eval import error_breakdown
    points = grid_coordinates(40, 0, 40 ** 3)
    x, y, z = points.unbind(-1)
    true = (points.norm(dim=-1) < 0.5).numpy()  # a sphere; the input camera looks along +y from y = -2
    camera = lrm.source_camera(2.0)
    near_axis = (x ** 2 + z ** 2 < 0.2 ** 2).numpy()  # well inside the sphere's silhouette
    cases = {
        "in_front": true | (near_axis & (y < -0.6).numpy()),
        "behind": true | (near_axis & (y > 0.6).numpy()),
        "outside": true | ((x - 0.85).abs() < 0.1).numpy() & (z.abs() < 0.1).numpy() & (y.abs() < 0.1).numpy(),
        "missed_front": true & (y > -0.2).numpy(),  # the nearer cap removed: all of it nearer than the middle
    }
    assert error_breakdown(true, true, points, camera) == dict.fromkeys(
        ("outside", "in_front", "behind", "between", "missed_front", "missed_back"), 0.0)
    for where, pred in cases.items():
        errors = error_breakdown(pred, true, points, camera)
        expected = float(((pred ^ true)).sum() / true.sum())
        assert expected > 0.005 and errors[where] == pytest.approx(expected), (where, errors)
        assert sum(errors.values()) == pytest.approx(expected), (where, errors)  # nowhere else
    hollow = true & (points.norm(dim=-1) > 0.25).numpy()  # a cavity the input rays pass through: filled = between
    errors = error_breakdown(true, hollow, points, camera)
    assert errors["between"] == pytest.approx((true & ~hollow).sum() / hollow.sum()) and errors["between"] > 0.1
    assert sum(errors.values()) == pytest.approx(errors["between"])


def test_image_cache_is_reused_only_when_the_current_code_made_it(tmp_path):
    from lrm.train.data import build_image_cache
    spec, seeds, path = DataSpec(image_size=32), [0, 1, 2], tmp_path / "views-3-32.npy"
    images, places = build_image_cache(seeds, spec, path)
    images = np.array(images)
    assert np.array_equal(images[1], input_image(make_shape(1), spec))
    stamp = path.stat().st_mtime_ns
    again, _ = build_image_cache(seeds, spec, path)  # current: read back, not rebuilt
    assert path.stat().st_mtime_ns == stamp and np.array_equal(again, images)
    stale = images.copy()
    stale[0] = 255 - stale[0]  # as if an older protocol (other shading) had rendered it
    np.save(path, stale)
    rebuilt, rebuilt_places = build_image_cache(seeds, spec, path)
    assert np.array_equal(rebuilt, images) and np.array_equal(rebuilt_places, places)
    moved = places.copy()
    moved[2, 0] *= 1.01  # a stale placement is caught too
    np.save(placements_path(path), moved)
    _, fixed = build_image_cache(seeds, spec, path)
    assert np.array_equal(fixed, places)
    other, _ = build_image_cache([0, 1, 5], spec, path)  # other seeds, same count: rebuilt for them
    assert np.array_equal(other[2], input_image(make_shape(5), spec))
