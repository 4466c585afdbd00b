"""The committed offline demo model: loads by name like a release, is small, and reconstructs held-out objects."""

import json

import pytest
import torch

import lrm
from lrm.train.eval import evaluate
from lrm.hub import DEMO_MODEL, DEMO_MODEL_DIR
from lrm.train.data import FOREGROUND_RATIO
from lrm.train.trainer import PRESETS


@pytest.fixture(scope="module")
def model():
    return lrm.load_model(DEMO_MODEL)


def test_demo_model_is_the_release_format_and_small(model):
    files = {p.name for p in DEMO_MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "infer.json", "README.md"} <= files
    assert (DEMO_MODEL_DIR / "model.safetensors").stat().st_size <= 20 * 2 ** 20
    config = json.loads((DEMO_MODEL_DIR / "config.json").read_text())
    assert {k: config[k] for k in PRESETS["demo"]["model"]} == PRESETS["demo"]["model"]  # the card's recipe
    d = model.infer_defaults
    assert (d.source_size, d.video_size, d.mesh_resolution) == (128, 192, 256)
    assert d.foreground_ratio == FOREGROUND_RATIO  # inputs are recentred like its training views


def test_demo_model_reconstructs_held_out_objects(model):
    """Within ~10 % of the model card's numbers on all 62 held-out objects (IoU 0.615, Chamfer 2.70 voxels, PSNR
    15.8 dB); these 9 score 0.597 / 2.83 / 15.2. The average-blob baseline scores IoU 0.27."""
    torch.manual_seed(0)
    result = evaluate(model, per_kind=1, unions=2)
    summary = result["summary"]["all"]
    assert summary["n"] == 9
    assert summary["iou"] >= 0.55, summary
    assert summary["psnr"] >= 14.2, summary
    assert summary["chamfer_voxels"] <= 3.0, summary


def test_demo_model_errors_add_up_to_its_iou(model):
    """`lrm.train.eval --errors` accounts for every wrong voxel: IoU = (1 - missed) / (1 + extra) per object; and the
    model keeps inside the input's silhouette."""
    rows = evaluate(model, per_kind=1, unions=1, errors=True)["objects"]
    assert len(rows) == 8
    for r in rows:
        extra = r["outside"] + r["in_front"] + r["behind"] + r["between"]
        missed = r["missed_front"] + r["missed_back"]
        assert (1 - missed) / (1 + extra) == pytest.approx(r["iou"], abs=1e-9), r
        assert r["outside"] < 0.02, r
