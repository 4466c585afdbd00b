"""The depth probe (`python -m lrm.train.probe`): exact depth layers, the ray fill, the oracle input, a short run."""

import json

import numpy as np
import pytest
import torch

from lrm.camera import source_camera
from lrm.train.eval import GRID
from lrm.field import grid_coordinates
from lrm.train.data import HELD_OUT_SEED, make_shape
from lrm.train.probe import (DepthProbe, depth_layers, evaluate_probe, fill, main, normal_view, probe_loss,
                             train_probe)
from lrm.train.shapes import Shape, source_view_camera


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("seed, kind", [(HELD_OUT_SEED + 1000, "box"), (HELD_OUT_SEED + 5000, "torus"),
                                        (HELD_OUT_SEED + 100_000, None)])
def test_exact_depth_layers_fill_the_true_object(seed, kind):
    shape = make_shape(seed, kind)
    layers = depth_layers(shape, 64)
    _, camera = source_view_camera(2.0)
    _, alpha = shape.render(camera[None], 64)
    hit = layers[0] > 0.5
    assert (hit == (alpha[0, 0] > 0.5)).float().mean() > 0.995  # the hit layer is the view's silhouette
    assert bool((layers[2][hit] >= layers[1][hit]).all())  # every ray leaves after it enters
    assert (layers[2][hit] - layers[1][hit]).mean() > 0.2  # through the object, not just its surface
    assert bool((layers[1:][:, ~hit] == 0).all())
    points = grid_coordinates(GRID, 0, GRID ** 3)
    true = (shape.sdf(points) < 0).numpy()
    exact = _iou(fill(layers.numpy(), points, source_camera(2.0)), true)
    assert exact > 0.85  # (a torus seen edge-on loses its hole: entry and exit only)
    shifted = layers.clone()
    shifted[1:, hit] += 0.15  # both depths 0.15 box units (~5 voxels) too far
    assert _iou(fill(shifted.numpy(), points, source_camera(2.0)), true) < exact - 0.15


def test_normal_view_shows_camera_frame_normals():
    sphere = Shape.random(0, "sphere")  # one primitive: a sphere at (or near) the centre
    sphere.primitives[0].center = torch.zeros(3)
    image = normal_view(sphere, 64).astype(int)
    assert (image[0, 0] == 255).all()  # background white
    centre = image[31:33, 31:33].reshape(-1, 3).mean(0)
    assert centre[2] > 245 and abs(centre[0] - 128) < 12 and abs(centre[1] - 128) < 12  # facing the camera
    row = image[32]
    left = next(i for i in range(64) if (row[i] != 255).any())
    right = max(i for i in range(64) if (row[i] != 255).any())
    assert row[left + 1][0] < 60 and row[right - 1][0] > 195  # camera right = red: the rim turns left / right
    column = image[:, 32]
    top = next(i for i in range(64) if (column[i] != 255).any())
    assert column[top + 1][1] > 195  # up = green


def test_probe_learns_and_is_scored_like_lrm_eval(tmp_path):
    torch.manual_seed(0)
    start = DepthProbe(128)
    model = train_probe(tmp_path, "views", objects=12, steps=100, batch=4)
    views, layers = np.load(tmp_path / "views-12-128.npy"), torch.from_numpy(np.load(tmp_path / "layers-12-64.npy"))
    image = torch.from_numpy(views).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        before, after = (sum(probe_loss(m(image), layers)).item() for m in (start.eval(), model.eval()))
    assert after < 0.6 * before
    log = [json.loads(line) for line in (tmp_path / "probe_log-views.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [50, 100]
    result = evaluate_probe(model, "views", per_kind=1, unions=1)
    assert result["summary"]["all"]["n"] == 8 and len(result["summary"]) == 9  # all, 7 kinds, unions
    assert all(0.0 <= row["iou"] <= 1.0 and row["depth_l1"] > 0 for row in result["objects"])


def test_probe_cli_with_normal_maps(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--input", "normals", "--out", str(out), "--objects", "8", "--steps", "2", "--batch", "4",
                 "--per-kind", "1", "--unions", "1", "--json", str(tmp_path / "r.json")]) == 0
    assert (out / "normals-8-128.npy").exists() and (out / "probe-normals.pt").exists()
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]
    assert summary["all"]["n"] == 8
    assert "IoU@64" in capsys.readouterr().out
