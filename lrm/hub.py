"""Where a model comes from: the released models' names, a Hugging Face id or a local path -> checkpoint files
(downloaded through huggingface_hub's cache), whether a model can be had now, its settings without its weights, and
which model runs when the one asked for cannot be had (the embedded demo model, with a note saying why).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import CheckpointError, model_from_checkpoint, read_checkpoint
from .config import InferDefaults, infer_defaults_for, released_defaults
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


# How long an answer of the Hub holds: an outage at start-up does not pin every uncached Hub model to the demo model
# for the life of a long-running app, and a busy app does not ask the Hub at every request.
REACHABILITY_TTL = 60.0
_reachability: tuple[float, bool] | None = None  # (when asked, the answer)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers (within `timeout` seconds; asked again after REACHABILITY_TTL)."""
    global _reachability
    if _reachability is None or time.monotonic() - _reachability[0] > REACHABILITY_TTL:
        import urllib.request

        import huggingface_hub.constants as hf_constants
        try:
            urllib.request.urlopen(f"{hf_constants.ENDPOINT}/api/models?limit=1", timeout=timeout).close()
            answer = True
        except OSError:
            answer = False
        _reachability = (time.monotonic(), answer)
    return _reachability[1]


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
# Loading: the model asked for, or the one that runs instead


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


@dataclass(frozen=True)
class ModelChoice:
    """The model that runs for one asked for: `source` (what `load_model` gets) is the one asked for, or the embedded
    demo model when that is a Hub model that cannot be obtained now; `note` then says so and why."""
    requested: str
    source: str
    note: str | None = None


def _demo_note(source: str, why: str) -> str:
    return (f"Using the embedded demo model '{DEMO_MODEL}' (trained on synthetic primitives only) because {source} is "
            f"not available: {why}")


def choose_model(source: str | os.PathLike, fallback: bool = True) -> ModelChoice:
    """Which model runs for `source`, and why: the one place that decides the fallback for the app, the CLI and the
    batch job. With fallback=True a Hub model that is neither in the local cache nor reachable (offline, or no answer
    within seconds) gives way to the embedded demo model at once, without download retries. Anything else runs as
    asked, and `load_model` says what is wrong with it."""
    requested = str(source).strip()
    if fallback and DEMO_MODEL_DIR.is_dir() and not is_available(source):
        try:
            hub_files(source)
        except (FileNotFoundError, ValueError):
            pass  # not a Hub name: load_model says what is wrong with it
        else:
            return ModelChoice(requested, DEMO_MODEL, _demo_note(requested, (
                "it is not in the local Hugging Face cache and the Hub "
                + ("is switched off (HF_HUB_OFFLINE=1)." if hub_offline() else "cannot be reached."))))
    return ModelChoice(requested, requested)


def load_model_or_demo(source: str | os.PathLike, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32) -> tuple[LRM, str | None]:
    """`load_model` of the model `choose_model(source)` picks -> (the model, the choice's note or None). A download
    that fails midway falls back too. Other errors (an unknown or damaged local file, tensors that do not fit) are
    raised as they are."""
    choice = choose_model(source)
    try:
        return load_model(choice.source, device, dtype), choice.note
    except ModelUnavailableError as err:
        if choice.note or not DEMO_MODEL_DIR.is_dir():
            raise
        return load_model(DEMO_MODEL, device, dtype), _demo_note(choice.requested, str(err))
