"""Checkpoint files: read them safely, convert their keys to this package's layout (one pure function), load them
strictly into an `LRM`, and write them back in a release's format.

Formats (all loaded unmodified):
- v1.1 `zxhezexin/openlrm-{obj,mix}-{small,base,large}-1.1`: `config.json` + `model.safetensors` (or the older
  `pytorch_model.bin`);
- v1.0 `zxhezexin/openlrm-{small,base,large}-obj-1.0`: `model.pth` = {'weights': state_dict, 'kwargs': {'model': ...,
  'infer': ...}} (the repo's `config.json` is invalid JSON and is never read);
- first release: `zxhezexin/OpenLRM` files `lrm-{base,large}-obj-v1.pth`, the same dict as v1.0.
Finding a checkpoint (a local path or a Hugging Face id) is `lrm/hub.py`'s job.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from .config import LRMConfig, infer_defaults_for
from .model import LRM


class CheckpointError(ValueError):
    """A checkpoint cannot be found, read or loaded; the message says what to do."""


# ----------------------------------------------------------------------------------------------------------------
# Key conversion: one pure function for every released layout.

# v1.0 and the first release keep the triplane tokens and the upsampler inside the transformer
# (`lrm/models/transformer.py: TriplaneTransformer.pos_embed / .deconv`); v1.1 moved them to the top level.
_V10_RENAMES = (("transformer.pos_embed", "pos_embed"), ("transformer.deconv.", "upsampler."))


def _rename(key: str, renames: tuple[tuple[str, str], ...]) -> str:
    for old, new in renames:
        if key == old or (old.endswith(".") and key.startswith(old)):
            return new + key[len(old):]
    return key


def convert_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """State dict of any released OpenLRM layout -> this package's (= v1.1) layout. Pure; detects by sentinel keys."""
    if "transformer.pos_embed" in state_dict or "transformer.deconv.weight" in state_dict:
        return {_rename(k, _V10_RENAMES): v for k, v in state_dict.items()}
    return dict(state_dict)


def export_state_dict(state_dict: Mapping[str, Tensor], release: str = "1.1") -> dict[str, Tensor]:
    """This package's layout -> the layout of `release` ("1.1" or "1.0"), the inverse of `convert_state_dict`."""
    if release == "1.1":
        return dict(state_dict)
    if release == "1.0":
        inverse = tuple((new, old) for old, new in _V10_RENAMES)
        return {_rename(k, inverse): v for k, v in state_dict.items()}
    raise ValueError(f"release must be '1.1' or '1.0', got {release!r}")


# ----------------------------------------------------------------------------------------------------------------
# Reading files


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}). A v1.1 checkpoint folder needs the config.json "
                              "published next to model.safetensors; re-download it.") from None


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}): it is truncated, corrupted or of "
                              "another type. Delete it and download it again.") from None


def _read_torch(path: Path, mmap: bool = False) -> Any:
    """torch.load with weights_only=True: tensors and plain containers only, never code. mmap=True maps the tensors
    instead of reading them (for torch's zip container; a legacy pickle stream is read)."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] != b"PK" and magic[:1] != b"\x80":  # torch's zip container / a legacy pickle stream
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (it starts with {magic!r}). Pass a model.pth / "
                              ".pth file, a model.safetensors with its config.json, or a Hugging Face repo id.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and magic[:2] == b"PK")
    except Exception as err:  # torch raises UnpicklingError / RuntimeError / EOFError for bad files
        text = str(err)
        if "GLOBAL" in text:
            raise CheckpointError(f"{path} contains pickled code, not only tensors; it was refused (checkpoints are "
                                  "loaded with weights_only=True and never executed). Use the official checkpoint "
                                  "file.") from None
        raise CheckpointError(f"{path} cannot be read as a PyTorch checkpoint ({type(err).__name__}: "
                              f"{text.splitlines()[0][:200]}); the file is probably truncated or corrupted. Delete it "
                              "and download it again.") from None


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint holds: config kwargs, state dict (own layout), stored inference settings, release, file."""
    config: LRMConfig
    state_dict: dict[str, Tensor]
    infer: Mapping[str, Any] | None
    release: str
    origin: str


def _config_from(kwargs: Any, where: str) -> LRMConfig:
    try:
        return LRMConfig.from_dict(kwargs)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: {err}") from None


def _infer_from(obj: Any, config: LRMConfig, release: str, where: str) -> Mapping[str, Any]:
    """Stored inference settings, checked: a mapping whose values make `InferDefaults`."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where} must hold a JSON object of inference settings, got {type(obj).__name__}.")
    try:
        infer_defaults_for(config, obj, release)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: a setting has a wrong type or value ({err}). Fix or delete the file.") \
            from None
    return obj


def _state_dict_from(obj: Any, where: str) -> dict[str, Tensor]:
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{where} does not hold a state dict of tensors; it is not an OpenLRM checkpoint.")
    return convert_state_dict(obj)


def read_checkpoint(path: str | os.PathLike, *, weights: bool = True) -> Checkpoint:
    """Read a local checkpoint: a folder, a `.pth` file or a `.safetensors` / `.bin` file with `config.json` beside.

    weights=False reads the settings only (the state dict comes back empty): a v1.1 checkpoint's weights file is not
    opened, a `.pth` file's tensors are mapped, not read.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint at {path}. Pass a folder with config.json + model.safetensors "
                                "(v1.1) or model.pth (v1.0), a .pth file, or a Hugging Face repo id.")
    if path.is_dir():
        for name in ("model.safetensors", "model.pth", "pytorch_model.bin"):
            if (path / name).is_file():
                return read_checkpoint(path / name, weights=weights)
        found = sorted(p for p in path.iterdir() if p.suffix in (".pth", ".safetensors"))
        if len(found) == 1:
            return read_checkpoint(found[0], weights=weights)
        raise CheckpointError(f"{path} holds no checkpoint: expected config.json + model.safetensors (v1.1) or "
                              "model.pth (v1.0).")
    if path.suffix == ".safetensors" or path.name == "pytorch_model.bin":
        config_path = path.with_name("config.json")
        if not config_path.is_file():
            raise CheckpointError(f"{path.name} needs the config.json of its release next to it ({config_path}).")
        config = _config_from(_read_json(config_path), str(config_path))
        # This project's checkpoints may carry their inference settings in infer.json (the releases do not).
        infer_path = path.with_name("infer.json")
        infer = _infer_from(_read_json(infer_path), config, "1.1", str(infer_path)) if infer_path.is_file() else None
        if not weights:
            return Checkpoint(config, {}, infer, "1.1", str(path))
        raw = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
        return Checkpoint(config, _state_dict_from(raw, str(path)), infer, "1.1", str(path))
    if path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
        obj = _read_torch(path, mmap=not weights)
        if isinstance(obj, Mapping) and "weights" in obj and "kwargs" in obj:
            kwargs = obj["kwargs"]
            if not isinstance(kwargs, Mapping) or "model" not in kwargs:
                raise CheckpointError(f"{path}: kwargs['model'] is missing; not an OpenLRM v1.0 checkpoint.")
            config = _config_from(kwargs["model"], f"{path} kwargs['model']")
            infer = kwargs.get("infer") if isinstance(kwargs.get("infer"), Mapping) else None
            infer = _infer_from(infer, config, "1.0", f"{path} kwargs['infer']") if infer else None
            state = _state_dict_from(obj["weights"], str(path)) if weights else {}
            return Checkpoint(config, state, infer, "1.0", str(path))
        config_path = path.with_name("config.json")
        if config_path.is_file():
            return Checkpoint(_config_from(_read_json(config_path), str(config_path)),
                              _state_dict_from(obj, str(path)) if weights else {}, None, "1.1", str(path))
        raise CheckpointError(f"{path} is not an OpenLRM checkpoint: a v1.0 model.pth holds 'weights' and 'kwargs'.")
    raise CheckpointError(f"Unsupported checkpoint file type {path.suffix!r} ({path}). Use model.safetensors + "
                          "config.json, or a .pth file.")


# ----------------------------------------------------------------------------------------------------------------
# Loading and writing


def check_state_dict(model: torch.nn.Module, state_dict: Mapping[str, Tensor], origin: str = "checkpoint") -> None:
    """Raise `CheckpointError` naming every missing, unexpected or mis-shaped tensor."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = sorted(f"{k}: file {tuple(state_dict[k].shape)} vs model {expected[k]}"
                    for k in set(expected) & set(state_dict) if tuple(state_dict[k].shape) != expected[k])
    if not (missing or unexpected or shapes):
        return

    def listing(title: str, items: list[str]) -> str:
        more = f" ... and {len(items) - 12} more" if len(items) > 12 else ""
        return f"\n  {title} ({len(items)}): {', '.join(items[:12])}{more}" if items else ""

    raise CheckpointError(f"{origin} does not match its config:" + listing("missing", missing)
                          + listing("unexpected", unexpected) + listing("wrong shape", shapes)
                          + "\nThe file belongs to another model or is damaged; use the config.json published with "
                            "it.")


def model_from_checkpoint(ckpt: Checkpoint, device: str | torch.device = "cpu",
                          dtype: torch.dtype = torch.float32) -> LRM:
    """Build the model on the meta device (no random init, no memory) and assign the checkpoint's tensors."""
    with torch.device("meta"):
        model = LRM(ckpt.config, infer_defaults_for(ckpt.config, ckpt.infer, ckpt.release))
    check_state_dict(model, ckpt.state_dict, ckpt.origin)
    model.load_state_dict(ckpt.state_dict, strict=True, assign=True)
    model.release, model.source = ckpt.release, ckpt.origin
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def save_pretrained(model: LRM, folder: str | os.PathLike, release: str = "1.1",
                    infer: Mapping[str, Any] | None = None) -> Path:
    """Write `model` in a release's on-disk format: "1.1" -> config.json + model.safetensors (+ infer.json with
    `infer` settings when given), "1.0" -> model.pth (with `infer` as kwargs['infer'])."""
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in export_state_dict(model.state_dict(), release).items()}
    if release == "1.1":
        (folder / "config.json").write_text(json.dumps(model.config.to_dict()))
        if infer:
            (folder / "infer.json").write_text(json.dumps(dict(infer)))
        save_file(state, str(folder / "model.safetensors"))
        return folder / "model.safetensors"
    if model.config.encoder_type != "dino":
        raise ValueError("the v1.0 format only holds DINO-encoder models")
    kwargs = {k: v for k, v in model.config.to_dict().items() if k != "encoder_type"}
    defaults = model.infer_defaults
    infer = dict(infer or {"source_size": defaults.source_size, "render_size": defaults.video_size})  # OpenLRM's names
    torch.save({"weights": state, "kwargs": {"model": kwargs, "infer": infer}}, folder / "model.pth")
    return folder / "model.pth"
