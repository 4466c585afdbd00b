"""The app's sessions: a folder of outputs each, and whether the session's client is still there.

A client is there while it holds a stream open to the server (a browser tab's or gradio_client's heartbeat, or the
queue stream it reads its results from), or has sent a request in the last `grace` seconds. `PresenceMiddleware`
counts the streams; Gradio's `unload` (the heartbeat stream closed) marks the moment a session may have left. A job is
stopped only when its client has really gone: no stream and no request for `grace` seconds (a tab closed, a client
killed). A client whose heartbeat drops while it still reads its result, or that only stalls, keeps its job.

A session's folder keeps its last `keep` runs; it is removed once the session has gone (after its job stopped), or
after `ttl` seconds without a run. A session is keyed by the web client's session hash, or "shared" without one.
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
from urllib.parse import parse_qs

# Each app process keeps its temporary files below RUN_ROOT/<pid>: its sessions' outputs and (unless GRADIO_TEMP_DIR
# is set) Gradio's upload and output cache. They go when the process ends; a start removes those of dead processes.
RUN_ROOT = Path(tempfile.gettempdir()) / "openlrm-demo"
SESSION_ROOT = RUN_ROOT / str(os.getpid()) / "sessions"
SESSION_TTL_S = 2 * 3600
GRACE_S = 30.0  # a browser's event stream reconnects within seconds; a client away longer than this has gone
KEEP_RUNS = 4   # the runs a session's folder keeps (the files a client downloads are Gradio's copies, kept apart)


def session_key(session_hash: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", session_hash or "shared")


class Sessions:
    """Per-session output folders and the sessions' presence (see the module's docstring)."""

    def __init__(self, root: str | Path = SESSION_ROOT, ttl: float = SESSION_TTL_S, grace: float = GRACE_S,
                 keep: int = KEEP_RUNS):
        self.root, self.ttl, self.grace, self.keep = Path(root), ttl, grace, keep
        self.cancelled: list[str] = []  # the runs stopped because their client had gone (a log)
        self._streams: dict[str, int] = {}
        self._left: dict[str, float] = {}  # since when a session has had no stream (and no request)
        self._busy: dict[str, int] = {}
        self._active: set[Path] = set()  # the runs of jobs that are running
        self._lock = threading.Lock()
        self._sweeper: threading.Thread | None = None

    @staticmethod
    def key(request) -> str:
        return session_key(getattr(request, "session_hash", None))

    # presence

    def connected(self, key: str) -> None:
        with self._lock:
            self._streams[key] = self._streams.get(key, 0) + 1
            self._left.pop(key, None)

    def disconnected(self, key: str) -> None:
        with self._lock:
            self._streams[key] = self._streams.get(key, 1) - 1
            if self._streams[key] <= 0:
                self._streams.pop(key)
                self._left[key] = time.monotonic()
        self._start_sweeper()

    def touch(self, request) -> None:
        """A request of the session: it is there."""
        with self._lock:
            self._left.pop(self.key(request), None)

    def left(self, request) -> None:
        """Gradio's unload: the session's heartbeat stream closed (it may come back within `grace`)."""
        key = self.key(request)
        with self._lock:
            if not self._streams.get(key):
                self._left.setdefault(key, time.monotonic())
        self._start_sweeper()

    def gone(self, request) -> str | None:
        """Why the session's client is taken to have gone (a job of it should stop), else None."""
        key = self.key(request)
        with self._lock:
            since = self._left.get(key)
            if since is None or self._streams.get(key) or time.monotonic() - since < self.grace:
                return None
        return (f"the job was stopped: its page or API client had gone (no connection and no request for "
                f"{self.grace:g} s)")

    # folders

    def new_run(self, request) -> Path:
        """A new folder for one run of the session (its oldest runs beyond `keep` are removed)."""
        self.touch(request)
        self.sweep()
        folder = self.root / self.key(request)
        if folder.is_dir():
            for old in sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime)[: -self.keep + 1 or None]:
                if old not in self._active:
                    shutil.rmtree(old, ignore_errors=True)
        run = folder / f"{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:8]}"
        run.mkdir(parents=True)
        return run

    @contextlib.contextmanager
    def job(self, request):
        """A new run folder for a job, kept (with the session's folder) while the job runs."""
        key = self.key(request)
        with self._lock:
            self._busy[key] = self._busy.get(key, 0) + 1
        run = None
        try:
            run = self.new_run(request)
            self._active.add(run)
            yield run
        finally:
            with self._lock:
                self._busy[key] -= 1
                self._active.discard(run)
        self.sweep()

    def sweep(self) -> None:
        """Remove the folders of sessions that have gone (and have no job running) or have been idle beyond the
        TTL."""
        if not self.root.is_dir():
            return
        for folder in self.root.iterdir():
            key = folder.name
            try:
                with self._lock:
                    if self._busy.get(key):
                        continue
                    since = self._left.get(key)
                    gone = since is not None and not self._streams.get(key) and time.monotonic() - since >= self.grace
                if gone or time.time() - folder.stat().st_mtime > self.ttl:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                pass

    def _start_sweeper(self) -> None:
        """A daemon thread that sweeps while sessions are leaving (folders go without waiting for a request)."""
        with self._lock:
            if self._sweeper is not None and self._sweeper.is_alive():
                return
            self._sweeper = threading.Thread(target=self._sweep_while_leaving, name="sessions", daemon=True)
            self._sweeper.start()

    def _sweep_while_leaving(self) -> None:
        while True:
            time.sleep(min(1.0, self.grace / 2))
            self.sweep()
            with self._lock:
                if not self._left:
                    return
                now = time.monotonic()  # forget sessions long gone (their folders went)
                for key in [k for k, t in self._left.items() if now - t > self.grace + 60 and not self._busy.get(k)]:
                    del self._left[key]


class PresenceMiddleware:
    """ASGI middleware: counts each session's open event streams (Gradio's heartbeat and queue data streams) into
    `Sessions`. Give it to the server: `launch(app_kwargs={"middleware": [Middleware(PresenceMiddleware,
    sessions=...)]})`."""

    def __init__(self, app, sessions: Sessions):
        self.app, self.sessions = app, sessions

    async def __call__(self, scope, receive, send):
        key = None
        if scope.get("type") == "http":
            path = scope.get("path", "")
            if "/heartbeat/" in path:
                key = session_key(path.rstrip("/").rsplit("/", 1)[-1])
            elif path.endswith("/queue/data"):
                hashes = parse_qs(scope.get("query_string", b"").decode()).get("session_hash")
                key = session_key(hashes[0]) if hashes else None
        if key is None:
            return await self.app(scope, receive, send)
        self.sessions.connected(key)
        try:
            return await self.app(scope, receive, send)
        finally:
            self.sessions.disconnected(key)


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
