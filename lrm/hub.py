"""Checkpoint files: find them (local path or Hugging Face Hub), read them safely, convert their keys, load strictly.

Formats (all loaded unmodified):
- v1.1 `zxhezexin/openlrm-{obj,mix}-{small,base,large}-1.1`: `config.json` + `model.safetensors` (or the older
  `pytorch_model.bin`);
- v1.0 `zxhezexin/openlrm-{small,base,large}-obj-1.0`: `model.pth` = {'weights': state_dict, 'kwargs': {'model': ...,
  'infer': ...}} (the repo's `config.json` is invalid JSON and is never read);
- first release: `zxhezexin/OpenLRM` files `lrm-{base,large}-obj-v1.pth`, the same dict as v1.0.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from .config import InferDefaults, LRMConfig, infer_defaults_for, released_defaults
from .model import LRM

HUB_OWNER = "zxhezexin"
FIRST_RELEASE_REPO = f"{HUB_OWNER}/OpenLRM"
# Every released model -> (its file format's release, its size).
RELEASES = {
    **{f"{HUB_OWNER}/openlrm-{data}-{size}-1.1": ("1.1", size) for data in ("mix", "obj")
       for size in ("small", "base", "large")},
    **{f"{HUB_OWNER}/openlrm-{size}-obj-1.0": ("1.0", size) for size in ("small", "base", "large")},
    # the first release: files of FIRST_RELEASE_REPO in the v1.0 format
    **{f"lrm-{size}-obj-v1": ("1.0", size) for size in ("base", "large")},
}
RELEASED_MODELS = tuple(RELEASES)
DEFAULT_MODEL = f"{HUB_OWNER}/openlrm-mix-base-1.1"  # the reference demo's choice


class CheckpointError(ValueError):
    """A checkpoint cannot be found, read or loaded; the message says what to do."""


class ModelUnavailableError(CheckpointError):
    """A Hub model cannot be obtained now (offline, or the Hub unreachable) and is not in the local cache."""


# The project's own small model, trained on procedural shapes (models/lrm-demo-shapes/README.md): it is in the
# repository, so it works without any network. Loadable by this name or by its folder.
DEMO_MODEL = "lrm-demo-shapes"
# An installed package carries it as lrm/models/ (pyproject.toml maps the repository's models/ there); a source
# checkout (or an editable install) has it in models/ beside lrm/.
DEMO_MODEL_DIR = next((d for d in (Path(__file__).resolve().parent / "models" / DEMO_MODEL,
                                   Path(__file__).resolve().parent.parent / "models" / DEMO_MODEL) if d.is_dir()),
                      Path(__file__).resolve().parent.parent / "models" / DEMO_MODEL)


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
# Finding files on the Hub


def _first_release_file(source: str) -> str | None:
    """`lrm-base-obj-v1`, `lrm-base-obj-v1.pth` or `zxhezexin/OpenLRM/lrm-base-obj-v1.pth` -> the file name."""
    name = source.removeprefix(FIRST_RELEASE_REPO).lstrip("/:")
    name = name.removesuffix(".pth")
    return f"{name}.pth" if name in RELEASES and not name.startswith(HUB_OWNER) else None


def _hub_download(repo_id: str, filename: str, revision: str | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except GatedRepoError:
        raise CheckpointError(f"{repo_id} is gated: accept its terms on huggingface.co and log in "
                              "(`hf auth login`).") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"No model {repo_id!r} on the Hugging Face Hub (or it is private). Released OpenLRM "
                              f"models: {', '.join(RELEASED_MODELS)}; or pass a local checkpoint path.") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{repo_id} has no revision {revision!r}.") from None
    except LocalEntryNotFoundError:  # (a subclass of EntryNotFoundError)
        raise ModelUnavailableError(
            f"Cannot get {repo_id}/{filename}: the Hugging Face Hub cannot be reached (offline, or HF_HUB_OFFLINE=1) "
            "and the file is not in the local cache. Connect once to download it, or pass a local checkpoint "
            "folder.") from None
    except EntryNotFoundError:
        raise  # the caller tries the next file layout
    except (HfHubHTTPError, OSError) as err:
        raise ModelUnavailableError(f"Downloading {repo_id}/{filename} failed: {err}. Check the network and try "
                                    "again, or pass a local checkpoint folder.") from None


def hub_files(source: str | os.PathLike) -> tuple[str, list[tuple[str, ...]]]:
    """A Hub model's repo id and the file layouts to try for it, in order: `zxhezexin/openlrm-mix-base-1.1`,
    `openlrm-base-obj-1.0` (the owner may be left out) or a first-release file `lrm-base-obj-v1`.

    Raises FileNotFoundError when `source` can only be a local path (it starts with `.`, `/` or `~`, names a weights
    file, or has more than one `/`) and ValueError when it is no valid repo id.
    """
    text = str(source).strip()
    filename = _first_release_file(text)
    if filename:
        return FIRST_RELEASE_REPO, [(filename,)]
    parts = text.split("/")
    if text.startswith((".", "/", "~")) or Path(text).suffix in (".pth", ".safetensors", ".bin") \
            or len(parts) > 2 or not all(parts):
        raise FileNotFoundError(f"No checkpoint at {Path(text).expanduser()}: the path does not exist.")
    repo_id = text if len(parts) == 2 else f"{HUB_OWNER}/{text}"
    from huggingface_hub.utils import validate_repo_id
    validate_repo_id(repo_id)  # HFValidationError (a ValueError) naming what is wrong
    if RELEASES.get(repo_id, ("1.1",))[0] == "1.0":
        return repo_id, [("model.pth",)]
    return repo_id, [("config.json", "model.safetensors"), ("model.pth",), ("config.json", "pytorch_model.bin")]


def _local(source: str | os.PathLike) -> Path | None:
    """The local checkpoint `source` names (a path, or the embedded demo model), else None."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    return DEMO_MODEL_DIR if str(source).strip() == DEMO_MODEL else None


def _cached(source: str | os.PathLike) -> Path | None:
    """The last file of the first layout of a Hub model that is complete in the local Hub cache, else None."""
    from huggingface_hub import try_to_load_from_cache
    try:
        repo_id, layouts = hub_files(source)
    except (FileNotFoundError, ValueError):
        return None
    for files in layouts:
        paths = [try_to_load_from_cache(repo_id, f) for f in files]
        if all(isinstance(p, str) for p in paths):
            return Path(paths[-1])
    return None


def resolve(source: str | os.PathLike, revision: str | None = None) -> Path:
    """Local path of the checkpoint named by `source`, downloading it from the Hub (into its cache) when needed."""
    from huggingface_hub.errors import EntryNotFoundError
    local = _local(source)
    if local is not None:
        return local
    try:
        repo_id, layouts = hub_files(source)
    except ValueError as err:
        raise CheckpointError(f"{str(source).strip()!r} is neither a local path nor a Hugging Face repo id "
                              f"({err}).") from None
    try:
        for files in layouts:
            try:
                return [_hub_download(repo_id, f, revision) for f in files][-1]
            except EntryNotFoundError:
                continue
    except CheckpointError as err:
        if repo_id == FIRST_RELEASE_REPO:
            raise
        raise type(err)(f"{str(source).strip()!r} is not a local path, so it was looked up on the Hugging Face Hub "
                        f"as {repo_id!r}: {err}") from None
    raise CheckpointError(f"{repo_id} holds no OpenLRM checkpoint (no model.safetensors + config.json, no model.pth).")


def hub_offline() -> bool:
    """True when huggingface_hub is set to stay offline (HF_HUB_OFFLINE=1)."""
    import huggingface_hub.constants as hf_constants
    return bool(hf_constants.HF_HUB_OFFLINE)


_HUB_REACHABLE: bool | None = None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers (asked once per process, within `timeout` seconds)."""
    global _HUB_REACHABLE
    if _HUB_REACHABLE is None:
        import urllib.request

        import huggingface_hub.constants as hf_constants
        try:
            urllib.request.urlopen(f"{hf_constants.ENDPOINT}/api/models?limit=1", timeout=timeout).close()
            _HUB_REACHABLE = True
        except OSError:
            _HUB_REACHABLE = False
    return _HUB_REACHABLE


def is_available(source: str | os.PathLike) -> bool:
    """Whether `source` can be loaded now: a local checkpoint path, the embedded demo model, a Hub model in the local
    cache, or any Hub model while the Hub can be reached. Never raises, never downloads weights."""
    if _local(source) is not None or _cached(source) is not None:
        return True
    try:
        hub_files(source)
    except (FileNotFoundError, ValueError):
        return False
    return not hub_offline() and hub_reachable()


def model_defaults(source: str | os.PathLike) -> InferDefaults:
    """A model's inference defaults (`LRM.infer_defaults`), without loading its weights where that can be helped:
    read from a local or cached checkpoint's settings, or known from a released model's name. Other Hub models are
    downloaded first. Raises like `load_model` when `source` cannot be found."""
    path = _local(source) or _cached(source)
    if path is None:
        name = str(source).strip()
        first = _first_release_file(name)
        release = RELEASES.get(first.removesuffix(".pth") if first else name) or RELEASES.get(f"{HUB_OWNER}/{name}")
        if release is not None:
            return released_defaults(*release)
        path = resolve(source)
    ckpt = read_checkpoint(path, weights=False)
    return infer_defaults_for(ckpt.config, ckpt.infer, ckpt.release)


# ----------------------------------------------------------------------------------------------------------------
# Loading


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


def load_model(source: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               revision: str | None = None) -> LRM:
    """Load any released OpenLRM checkpoint, strictly, in eval mode.

    Args:
        source: a Hugging Face repo id (`zxhezexin/openlrm-mix-base-1.1`, `openlrm-base-obj-1.0`, ...), a first-release
            file (`lrm-base-obj-v1`), a local folder (config.json + model.safetensors, or model.pth) or a local
            .pth / .safetensors file.
        device, dtype: where and in which precision the model lives (float32 on CPU by default).
    Returns:
        `LRM` with `.config`, `.infer_defaults`, `.release` ("1.0" / "1.1") and `.source`.
    """
    return model_from_checkpoint(read_checkpoint(resolve(source, revision)), device, dtype)


def load_model_or_demo(source: str | os.PathLike, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32) -> tuple[LRM, str | None]:
    """`load_model(source)`, or the embedded demo model when `source` is a Hub model that cannot be obtained now.

    A Hub model that is not in the local cache while the Hub is out of reach (offline, or no answer within seconds)
    falls back at once, without download retries. Returns the model and, when it fell back, a note saying which model
    runs and why. Other errors (an unknown or damaged local file, tensors that do not fit) are raised as they are.
    """
    def demo(why: str) -> tuple[LRM, str]:
        note = (f"Using the embedded demo model '{DEMO_MODEL}' (trained on synthetic primitives only) because "
                f"{source} is not available: {why}")
        return load_model(DEMO_MODEL_DIR, device, dtype), note

    if DEMO_MODEL_DIR.is_dir() and not is_available(source):
        try:
            hub_files(source)
        except (FileNotFoundError, ValueError):
            pass  # not a Hub name: load_model says what is wrong with it
        else:
            return demo("it is not in the local Hugging Face cache and the Hub "
                        + ("is switched off (HF_HUB_OFFLINE=1)." if hub_offline() else "cannot be reached."))
    try:
        return load_model(source, device, dtype), None
    except ModelUnavailableError as err:
        if not DEMO_MODEL_DIR.is_dir():
            raise
        return demo(str(err))


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
    infer = dict(infer or {"source_size": defaults.source_size, "render_size": defaults.render_size})
    torch.save({"weights": state, "kwargs": {"model": kwargs, "infer": infer}}, folder / "model.pth")
    return folder / "model.pth"
