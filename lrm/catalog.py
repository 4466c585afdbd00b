"""The models a front end offers by name, which one runs for each name, and one loaded model kept in memory.

Names are what users and API clients see and send: released Hub ids, `lrm-demo-shapes`, and `local: <folder>` for a
local checkpoint (never a server path). A front end loads only what its catalogue offers.
"""

from __future__ import annotations

import gc
import sys
import threading
from pathlib import Path
from typing import Sequence

import torch

from .config import InferDefaults
from .hub import (DEFAULT_MODEL, DEMO_MODEL, RELEASED_MODELS, ModelChoice, choose_model, is_available,
                  load_model_or_demo, model_defaults)
from .model import LRM

_GENERIC = {"model", "model.pth", "model.safetensors", "pytorch_model.bin"}  # file / folder names that say nothing


def local_label(path: str | Path) -> str:
    """'local: <folder>' naming a local checkpoint, not just its generic file or folder name ('model', 'model.pth')."""
    p = Path(path).expanduser().resolve()
    return "local: " + "/".join([p.parent.name, p.name] if p.name in _GENERIC else [p.name])


class Catalog:
    """The model menu for some extra checkpoints (local folders / files or Hub ids), then the embedded demo model and
    every released model.

    Given models that cannot be loaded are left out, with a line on stderr; released models that cannot be obtained
    now say so in their label. The first given model is the default, else the reference demo's model (or, offline,
    the demo model). `banner` says when the Hub cannot be reached ("" otherwise).
    """

    def __init__(self, models: Sequence[str | Path] = ()):
        self.sources: dict[str, str] = {}  # name -> source as `lrm.load_model` takes it
        for m in map(str, models):
            if not is_available(m):
                print(f"--model {m}: not a local checkpoint, and no Hub model that can be obtained now; left out of "
                      "the menu", file=sys.stderr)
                continue
            name = local_label(m) if Path(m).expanduser().exists() else m
            while name in self.sources:
                name += "'"
            self.sources[name] = m
        if is_available(DEMO_MODEL) and DEMO_MODEL not in self.sources.values():
            self.sources[DEMO_MODEL] = DEMO_MODEL
        local = list(self.sources)
        online = is_available(DEFAULT_MODEL)
        for m in RELEASED_MODELS:
            self.sources.setdefault(m, m)
        self.labels = {name: name for name in self.sources}
        self.labels[DEMO_MODEL] = f"{DEMO_MODEL} (offline demo model, synthetic shapes)"
        for name in set(self.sources) - set(local):
            if not is_available(name):
                self.labels[name] = f"{name} (not available offline: runs {DEMO_MODEL})"
        given = [name for name in local if name != DEMO_MODEL]
        self.default = given[0] if given else DEFAULT_MODEL if online or not local else local[0]
        self.banner = "" if online else (
            "**Offline:** the Hugging Face Hub cannot be reached, so released OpenLRM models that are not already "
            f"downloaded cannot be used. Running **{self.labels[self.default]}**; available here: "
            f"{', '.join(self.labels[name] for name in local)}.")

    @property
    def choices(self) -> list[tuple[str, str]]:
        """(label, name) for a menu."""
        return [(self.labels[name], name) for name in self.sources]

    def choose(self, name: str) -> ModelChoice:
        """The model that runs for a menu name (`lrm.choose_model`); ValueError for a name not on the menu."""
        if name not in self.sources:
            raise ValueError(f"Unknown model {name!r}: choose one of the menu.")
        return choose_model(self.sources[name])

    def settings(self, name: str) -> InferDefaults:
        """The settings of the model that runs for a menu name (frame size, mesh resolution, ...), read without its
        weights where that can be helped; the reference's when they cannot be read."""
        try:
            return model_defaults(self.choose(name).source)
        except (ValueError, FileNotFoundError):
            return InferDefaults()


class ModelCache:
    """Keeps one model in memory; switching models frees the previous one first. A Hub model that cannot be
    obtained now is replaced by the embedded demo model at once (`lrm.choose_model`); `note` then says so."""

    def __init__(self, device: str | torch.device = "cpu"):
        self.device, self.source, self.model, self.note = device, None, None, None
        self._lock = threading.Lock()

    def get(self, source: str) -> LRM:
        with self._lock:
            if source != self.source:
                self.model, self.source, self.note = None, None, None
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.model, self.note = load_model_or_demo(source, device=self.device)
                self.source = source
            return self.model
