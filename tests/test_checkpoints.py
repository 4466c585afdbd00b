"""Every released architecture, the on-disk formats, key conversion, strict loading and the errors users can cause."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import lrm
from lrm.config import LRMConfig
from lrm.checkpoint import CheckpointError, convert_state_dict, export_state_dict, save_pretrained
from lrm.hub import load_model
from lrm.model import LRM

from conftest import FIXTURES, REFCHECK

MANIFESTS = sorted((FIXTURES / "manifests").glob("*.json"))
TINY_11 = REFCHECK / "refcheck-tiny-1.1" / "model"
TINY_10 = REFCHECK / "refcheck-tiny-1.0" / "model"
# The 44-byte config.json of the v1.0 Hub repos (OpenLRM issue #21): a trailing comma makes it invalid JSON.
V10_CONFIG_JSON = '{"_model_name": "openlrm-base-obj-1.0",}'


def manifest(path):
    data = json.loads(path.read_text())
    release = "1.0" if data["format"] == "model.pth" else "1.1"
    return data, release


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.stem for p in MANIFESTS])
def test_architecture_matches_release_manifest(path):
    data, release = manifest(path)
    with torch.device("meta"):
        model = LRM(LRMConfig.from_dict(data["config"]))
    ours = [(k, list(v.shape)) for k, v in export_state_dict(model.state_dict(), release).items()]
    theirs = [(name, shape) for name, shape, _ in data["tensors"]]
    assert sorted(ours) == sorted(theirs)
    assert sum(p.numel() for p in model.parameters()) == data["n_params"]


@pytest.mark.slow
@pytest.mark.parametrize("path", MANIFESTS, ids=[p.stem for p in MANIFESTS])
def test_full_size_round_trip_through_release_format(path, tmp_path):
    """Random full-size weights -> the release's real file format -> `load_model`, strictly, one model at a time."""
    data, release = manifest(path)
    with torch.device("meta"):
        model = LRM(LRMConfig.from_dict(data["config"]))
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):  # a distinct value per tensor catches any swapped tensor
            p.fill_(i * 1e-3)
    written = save_pretrained(model, tmp_path, release)
    if release == "1.0":
        assert written.name == "model.pth"
        (tmp_path / "config.json").write_text(V10_CONFIG_JSON)  # as in the Hub repo: must be ignored
        raw = torch.load(written, map_location="cpu", weights_only=True, mmap=True)
        assert set(raw) == {"weights", "kwargs"} and set(raw["kwargs"]) == {"model", "infer"}
        names = set(raw["weights"])
    else:
        assert json.loads((tmp_path / "config.json").read_text()) == data["config"]
        names = set(load_file(written))
    assert names == {name for name, _, _ in data["tensors"]}
    del model
    loaded = load_model(tmp_path)
    assert loaded.release == release and not loaded.training
    assert all(not p.requires_grad for p in loaded.parameters())
    for i, p in enumerate(loaded.parameters()):
        assert p.flatten()[0].item() == pytest.approx(i * 1e-3)
    if release == "1.1":
        assert (loaded.infer_defaults.source_size, loaded.infer_defaults.video_size) == \
            (data["infer_defaults"]["source_size"], data["infer_defaults"]["render_size"])  # OpenLRM's names


def test_key_conversion_is_pure_and_invertible():
    sd = {"transformer.pos_embed": torch.zeros(1), "transformer.deconv.weight": torch.zeros(2),
          "transformer.layers.0.norm1.norm.weight": torch.zeros(3), "encoder.model.layernorm.bias": torch.zeros(4)}
    before = dict(sd)
    ours = convert_state_dict(sd)
    assert sd == before  # input untouched
    assert set(ours) == {"pos_embed", "upsampler.weight", "transformer.layers.0.norm1.norm.weight",
                         "encoder.model.layernorm.bias"}
    assert export_state_dict(ours, "1.0") == sd
    assert convert_state_dict(ours) == ours  # v1.1 layout passes through


def test_v10_model_pth_loads_beside_its_invalid_config_json(tmp_path):
    shutil.copy(TINY_10 / "model.pth", tmp_path / "model.pth")
    (tmp_path / "config.json").write_text(V10_CONFIG_JSON)
    with pytest.raises(json.JSONDecodeError):
        json.loads(V10_CONFIG_JSON)
    model = load_model(tmp_path)
    assert model.release == "1.0" and model.config.encoder_type == "dino"
    assert model.infer_defaults.source_size == 256 and model.infer_defaults.video_size == 32  # from kwargs['infer']
    assert not model.training


def test_local_file_sources(tmp_path):
    assert load_model(TINY_11 / "model.safetensors").release == "1.1"
    assert load_model(TINY_10 / "model.pth").release == "1.0"
    lone = tmp_path / "model.safetensors"
    shutil.copy(TINY_11 / "model.safetensors", lone)
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(lone)


def test_truncated_safetensors(tmp_path):
    shutil.copy(TINY_11 / "config.json", tmp_path)
    data = (TINY_11 / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupted"):
        load_model(tmp_path)


def test_truncated_pth(tmp_path):
    data = (TINY_10 / "model.pth").read_bytes()
    (tmp_path / "model.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_model(tmp_path)


def test_wrong_file_type(tmp_path):
    png = REFCHECK / "inputs" / "disc_rgb.png"
    shutil.copy(png, tmp_path / "model.pth")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_model(tmp_path / "model.pth")
    with pytest.raises(CheckpointError, match="Unsupported checkpoint file type"):
        load_model(png)


def test_pickle_with_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    torch.save({"weights": {}, "kwargs": {"model": Payload()}}, tmp_path / "model.pth")
    with pytest.raises(CheckpointError, match="pickled code"):
        load_model(tmp_path)
    assert not marker.exists()


def test_wrong_keys_and_shapes_are_named(tmp_path):
    shutil.copy(TINY_11 / "config.json", tmp_path)
    sd = load_file(TINY_11 / "model.safetensors")
    sd["encoder.model.extra_token"] = sd.pop("encoder.model.cls_token")
    sd["upsampler.bias"] = torch.zeros(5)
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path)
    text = str(err.value)
    assert "missing (1): encoder.model.cls_token" in text
    assert "unexpected (1): encoder.model.extra_token" in text
    assert "upsampler.bias: file (5,) vs model (8,)" in text


def test_bad_config_keys(tmp_path):
    shutil.copy(TINY_11 / "model.safetensors", tmp_path)
    config = json.loads((TINY_11 / "config.json").read_text())
    config["decoder_layers"] = 5
    del config["triplane_dim"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"missing keys \['triplane_dim'\]; unknown keys \['decoder_layers'\]"):
        load_model(tmp_path)


def test_bad_infer_json_names_the_file(tmp_path):
    shutil.copytree(TINY_11, tmp_path / "m")
    (tmp_path / "m" / "infer.json").write_text('{"render_size": "large"}')
    with pytest.raises(CheckpointError, match=r"infer\.json: a setting has a wrong type or value"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "infer.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match=r"infer\.json must hold a JSON object"):
        load_model(tmp_path / "m")


def test_unknown_sources_offline():
    with pytest.raises(CheckpointError, match="cannot be reached"):
        load_model("someone/not-an-openlrm-model")
    with pytest.raises(CheckpointError, match="cannot be reached"):
        load_model("openlrm-mix-base-1.1")  # short name -> zxhezexin/..., not cached here
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model("./no/such/folder")


def test_availability_and_settings_without_loading(tmp_path, monkeypatch):
    # never raises, never downloads: mistyped paths and invalid ids are simply not available
    for source in ("./no-such-dir", "/etc/nothing-here", "a b/c", "zxhezexin/openlrm-mix-base-1.1", "x/y/z"):
        assert not lrm.is_available(source)
    assert lrm.is_available(TINY_11) and lrm.is_available("lrm-demo-shapes")
    assert lrm.model_defaults(TINY_10).video_size == lrm.load_model(TINY_10).infer_defaults.video_size
    with pytest.raises(CheckpointError, match="neither a local path nor a Hugging Face repo id"):
        load_model("a b/c")


def test_unavailable_hub_model_falls_back_at_once(monkeypatch):
    """Offline and not cached: the demo model, with a note, without a single download attempt (each costs ~23 s of
    retries when the network is merely unreachable)."""
    def no_download(*args):
        pytest.fail(f"tried to download {args}")
    monkeypatch.setattr(lrm.hub, "_hub_download", no_download)
    model, note = lrm.load_model_or_demo("zxhezexin/openlrm-obj-large-1.1")
    assert model.source.endswith("model.safetensors") and "lrm-demo-shapes" in note and "HF_HUB_OFFLINE" in note
    with pytest.raises(FileNotFoundError):  # not a Hub name: no fallback, the error says what is wrong
        lrm.load_model_or_demo("./no/such/folder")


def _fake_hub_cache(cache, repo_id, files):
    """Lay files out as huggingface_hub's cache does, so the real download code finds them offline."""
    commit = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, src in files.items():
        if isinstance(src, str):
            (snapshot / name).write_text(src)
        else:
            shutil.copy(src, snapshot / name)


def test_hub_ids_resolve_through_the_huggingface_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    _fake_hub_cache(tmp_path, "zxhezexin/openlrm-mix-small-1.1",
                    {"config.json": TINY_11 / "config.json", "model.safetensors": TINY_11 / "model.safetensors"})
    _fake_hub_cache(tmp_path, "zxhezexin/openlrm-small-obj-1.0",
                    {"config.json": V10_CONFIG_JSON, "model.pth": TINY_10 / "model.pth"})
    _fake_hub_cache(tmp_path, "zxhezexin/OpenLRM", {"lrm-base-obj-v1.pth": TINY_10 / "model.pth"})
    assert load_model("zxhezexin/openlrm-mix-small-1.1").release == "1.1"
    assert load_model("openlrm-mix-small-1.1").release == "1.1"
    assert load_model("zxhezexin/openlrm-small-obj-1.0").release == "1.0"
    for name in ("lrm-base-obj-v1", "lrm-base-obj-v1.pth", "zxhezexin/OpenLRM/lrm-base-obj-v1.pth"):
        assert load_model(name).release == "1.0"
    with pytest.raises(CheckpointError, match="cannot be reached"):
        load_model("lrm-large-obj-v1")


def test_dtype_and_public_names():
    model = lrm.load_model(TINY_11, dtype=torch.float64)
    assert model.pos_embed.dtype == torch.float64
    assert isinstance(model.config, lrm.LRMConfig) and isinstance(model.infer_defaults, lrm.InferDefaults)
    planes = model.forward_planes(torch.full((1, 3, 224, 224), 0.5), lrm.source_camera())
    assert planes.shape == (1, 3, 8, 16, 16) and planes.dtype == torch.float64
    sigma, rgb = model.query_points(planes, torch.zeros(1, 5, 3))
    assert sigma.shape == (1, 5, 1) and rgb.shape == (1, 5, 3) and (sigma >= 0).all()
    out = model.render(planes, lrm.orbit_cameras(3)[None], 8)
    assert out["rgb"].shape == (1, 3, 3, 8, 8) and out["depth"].shape == out["weight"].shape == (1, 3, 1, 8, 8)
    # v1.1 orbit: first and last views are the same camera; v1.0 orbit has none repeated
    assert torch.allclose(lrm.orbit_cameras(5)[0], lrm.orbit_cameras(5)[-1], atol=1e-6)
    assert not torch.allclose(lrm.orbit_cameras(5, endpoint=False)[0], lrm.orbit_cameras(5, endpoint=False)[-1])
