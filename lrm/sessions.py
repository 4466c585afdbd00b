"""The app's sessions: each writes below a folder of its own, removed when it ends (after its running job has stopped)
or when it has been idle too long; a job of an ended session stops at its next progress report.

A session is keyed by the web client's session hash (`gr.Request.session_hash`), or "shared" without one.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

# Each app process keeps its temporary files below RUN_ROOT/<pid>: its sessions' outputs and (unless GRADIO_TEMP_DIR
# is set) Gradio's upload and output cache. They go when the process ends; a start removes those of dead processes.
RUN_ROOT = Path(tempfile.gettempdir()) / "openlrm-demo"
SESSION_ROOT = RUN_ROOT / str(os.getpid()) / "sessions"
SESSION_TTL_S = 2 * 3600


class JobCancelled(Exception):
    """The session of a running job has ended."""


class Sessions:
    """Per-session output folders and the sessions' lives (see the module's docstring)."""

    def __init__(self, root: str | Path = SESSION_ROOT, ttl: float = SESSION_TTL_S):
        self.root, self.ttl = Path(root), ttl
        self.ended: set[str] = set()
        self.cancelled: list[str] = []  # the runs stopped because their session ended (a log)
        self._busy: dict[str, int] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(request) -> str:
        return re.sub(r"[^A-Za-z0-9_-]", "_", getattr(request, "session_hash", None) or "shared")

    def new_run(self, request) -> Path:
        """A new folder for one run of the session."""
        self.sweep()
        run = self.root / self.key(request) / f"{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:8]}"
        run.mkdir(parents=True)
        return run

    @contextlib.contextmanager
    def job(self, request):
        """Marks the session busy while its job runs, so that its folder outlives the job."""
        key = self.key(request)
        with self._lock:
            self._busy[key] = self._busy.get(key, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._busy[key] -= 1
                done = self._busy[key] == 0 and key in self.ended
            if done:
                shutil.rmtree(self.root / key, ignore_errors=True)

    def check(self, request) -> None:
        """Raise JobCancelled when the session has ended."""
        if self.key(request) in self.ended:
            raise JobCancelled

    def close(self, request) -> None:
        key = self.key(request)
        with self._lock:
            self.ended.add(key)
            busy = self._busy.get(key, 0) > 0
        if not busy:  # else the job removes it when it stops
            shutil.rmtree(self.root / key, ignore_errors=True)

    def sweep(self) -> None:
        """Remove the folders of sessions idle for longer than the TTL."""
        if not self.root.is_dir():
            return
        for folder in self.root.iterdir():
            try:
                if time.time() - folder.stat().st_mtime > self.ttl and not self._busy.get(folder.name):
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                pass


def sweep_dead_runs(root: Path = RUN_ROOT) -> None:
    """Remove the temporary files of app processes that are gone (killed without cleaning up)."""
    for folder in root.glob("*"):
        if folder.name.isdigit() and int(folder.name) != os.getpid():
            try:
                os.kill(int(folder.name), 0)
            except ProcessLookupError:
                shutil.rmtree(folder, ignore_errors=True)
            except PermissionError:
                pass  # alive, another user's
