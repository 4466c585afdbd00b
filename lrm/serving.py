"""Jobs away from the web server, behind one small interface: `runner.submit(request)` gives a job whose events (the
stages' progress, each stage's files, the end) stream as they come; `job.cancel()` stops it.

- `LocalRunner`: a model worker in a process of its own on this machine (the default). The web server's interpreter
  never runs a model stage, so it answers its pages, heartbeats and progress at once whatever a job does (the mesh and
  asset stages hold the GIL for seconds). A worker that dies takes its job with it: the job ends with an error that
  says what to change, and a new worker starts.
- `ServeRunner` (lrm/serve.py): replicas of a Ray Serve deployment, one GPU or some CPU threads each, on one machine
  or a cluster.
- `InProcessRunner`: the job in the web server's process, for ZeroGPU Spaces, where the `spaces.GPU` function is the
  worker.

Every runner runs `ModelWorker.run`: one model kept loaded, one job at a time, its files sent back as bytes (so they
reach the front end from any machine).
"""

from __future__ import annotations

import itertools
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable, Iterator, Literal

from .options import JobOptions

# What the user of a job that ended without its result is told (Event.kind "failed"; `reason` says which).
CRASHED = ("the model worker stopped while making this object (it was killed, or ran out of memory); a new one is "
           "starting. Try again, with a lower mesh resolution, frame size or texture size if it happens again.")
CANCEL_GRACE_S = 20.0  # a cancelled job that has not stopped by then is stopped with its worker


@dataclass(frozen=True)
class JobRequest:
    """One reconstruction job for a worker."""
    model: str                 # what `lrm.load_model` takes (a `Catalog.choose(...)` source)
    image: bytes               # the picture's file (PNG, ...)
    options: JobOptions
    name: str = "model"        # the output files' stem
    preprocessed: bool = True  # the picture is `lrm.preprocess`'s (recentred); False: recentre it for this model
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class Event:
    """What a job reports: "waiting" (for its worker to start), "progress" (stage, fraction), "files" (a stage is done:
    the files it made, key -> (file name, content)), then "done" (the summary, the problems, which model ran when it
    is not the one asked for) or "failed" (why, for the user; `reason`: "user", "memory", "error", "crashed",
    "cancelled", "busy")."""
    kind: Literal["waiting", "progress", "files", "done", "failed"]
    stage: str = ""
    fraction: float = 0.0
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    summary: str = ""
    problems: list[str] = field(default_factory=list)
    note: str | None = None
    message: str = ""
    reason: str = ""

    @property
    def final(self) -> bool:
        return self.kind in ("done", "failed")


class JobCancelled(Exception):
    pass


def failure(err: BaseException) -> Event:
    """The "failed" event for an exception of a job."""
    from .pipeline import describe_error
    message = describe_error(err)
    reason = "memory" if message.startswith("out of memory") else "user" if isinstance(err, (ValueError, OSError)) \
        else "error"
    return Event("failed", message=message, reason=reason)


class ModelWorker:
    """Runs jobs: one model kept loaded (the last one asked for), one job at a time."""

    def __init__(self, device: str = "cpu"):
        from .catalog import ModelCache
        self.cache = ModelCache(device)

    def warm_up(self, model: str, log: Callable[[str], None] = print) -> None:
        """Load `model` and the compiled renderer, so that the first job waits for neither (the renderer is compiled
        on the first run after an install, ~10 s, then loaded from numba's cache)."""
        from . import raymarch
        start = time.perf_counter()
        log(f"model worker: loading {model} ...")
        self.cache.get(model)
        log("model worker: preparing the renderer (compiled on the first run after an install: ~10 s) ...")
        raymarch.warm_up()
        log(f"model worker: ready in {time.perf_counter() - start:.1f} s")

    def run(self, request: JobRequest, cancelled: Callable[[], bool] = lambda: False) -> Iterator[Event]:
        """The job's events. It runs in a thread of its own (so that progress streams from inside a stage); it stops
        at its next progress report once `cancelled()` is true, or once the caller stops reading."""
        from .pipeline import reconstruct_steps
        events: queue.Queue = queue.Queue()
        closed = threading.Event()

        def report(stage: str, fraction: float) -> None:
            if closed.is_set() or cancelled():
                raise JobCancelled
            events.put(Event("progress", stage=stage, fraction=fraction))

        def work() -> None:
            try:
                model = self.cache.get(request.model)
                note = self.cache.note
                with tempfile.TemporaryDirectory(prefix="lrm-job-") as tmp:
                    sent: set[str] = set()
                    for stage, result in reconstruct_steps(model, request.image, tmp, request.options,
                                                           name=request.name, progress=report,
                                                           preprocessed=request.preprocessed and not note):
                        new = {k: p for k, p in result.files.items() if k not in sent}
                        events.put(Event("files", stage=stage, files={k: (p.name, p.read_bytes())
                                                                      for k, p in new.items()}))
                        sent |= set(new)
                    events.put(Event("done", summary=result.summary(), problems=list(result.problems), note=note))
            except JobCancelled:
                events.put(Event("failed", message="the job was stopped", reason="cancelled"))
            except BaseException as err:  # noqa: BLE001 (the job's end, said to its user)
                events.put(failure(err))

        thread = threading.Thread(target=work, name=f"job-{request.id[:8]}", daemon=True)
        thread.start()
        try:
            while True:
                event = events.get()
                yield event
                if event.final:
                    return
        finally:
            closed.set()
            thread.join()


# ----------------------------------------------------------------------------------------------------------------
# The local worker: a process of its own, talking over a socket pair


def worker_main(fd: int, device: str, threads: int | None, warm: str | None) -> None:
    """A worker process: warm up, then run the jobs that come over the connection, sending their events back. It
    exits when its connection closes (the app is gone)."""
    conn = Connection(fd)
    if threads:
        import torch
        torch.set_num_threads(threads)
    worker = ModelWorker(device)
    cancelled: set[str] = set()
    jobs: queue.Queue = queue.Queue()

    def read() -> None:
        try:
            while True:
                message = conn.recv()
                if message[0] == "cancel":
                    cancelled.add(message[1])
                else:
                    jobs.put(message[1])
        except (EOFError, OSError):
            os._exit(0)

    threading.Thread(target=read, name="connection", daemon=True).start()
    if warm:
        try:
            worker.warm_up(warm, log=lambda line: print(line, file=sys.stderr, flush=True))
        except Exception as err:  # noqa: BLE001 (a job asking for that model will say what is wrong)
            print(f"model worker: {warm} could not be loaded ({failure(err).message})", file=sys.stderr, flush=True)
    conn.send(("ready", None))
    while True:
        request = jobs.get()
        for event in worker.run(request, lambda: request.id in cancelled):
            conn.send((request.id, event))
        cancelled.discard(request.id)


class _Worker:
    """A worker process seen from the app: its process, its connection, whether it has warmed up."""

    def __init__(self, device: str, threads: int | None, warm: str | None):
        self.args = (device, threads, warm)
        self.proc: subprocess.Popen | None = None
        self.conn: Connection | None = None
        self.ready = False

    def start(self) -> None:
        ours, theirs = socket.socketpair()
        root = str(Path(__file__).resolve().parent.parent)  # so that `lrm` imports whatever the cwd
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        device, threads, warm = self.args
        self.proc = subprocess.Popen([sys.executable, "-m", "lrm.serving", str(theirs.fileno()), device,
                                      str(threads or 0), warm or ""], pass_fds=[theirs.fileno()], env=env)
        theirs.close()
        self.conn, self.ready = Connection(ours.detach()), False

    def stop(self) -> None:
        if self.proc is not None:
            self.conn.close()  # the worker exits when its connection closes
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.conn.close()
            self.proc = None
        self.start()


class LocalRunner:
    """Jobs in model worker processes on this machine: `workers` processes, one job at a time each (a device each:
    one GPU, or the CPU's threads shared). Workers start on `start()` (or the first job) and load `warm` at once."""

    def __init__(self, device: str = "cpu", workers: int = 1, threads: int | None = None, warm: str | None = None):
        self.concurrency = workers
        self._workers = [_Worker(device, threads, warm) for _ in range(workers)]
        self._free: queue.Queue[_Worker] = queue.Queue()
        self._started = False
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if not self._started:
                for w in self._workers:
                    w.start()
                    self._free.put(w)
                self._started = True

    def submit(self, request: JobRequest, stop: Callable[[], str | None] = lambda: None) -> "LocalJob":
        """A job for the next free worker (it waits for one). `stop()` is asked while the job runs: a reason (for its
        user) stops the job."""
        self.start()
        return LocalJob(self, self._free.get(), request, stop)

    def close(self) -> None:
        with self._lock:
            for w in self._workers:
                w.stop()
            self._started = False


class LocalJob:
    def __init__(self, runner: LocalRunner, worker: _Worker, request: JobRequest, stop: Callable[[], str | None]):
        self.runner, self.worker, self.request, self.stop = runner, worker, request, stop
        self.cancelled_at: float | None = None
        self.why = ""

    def cancel(self, why: str = "the job was stopped") -> None:
        if self.cancelled_at is None:
            self.cancelled_at, self.why = time.monotonic(), why
            try:
                self.worker.conn.send(("cancel", self.request.id))
            except OSError:
                pass

    def __iter__(self) -> Iterator[Event]:
        w, finished = self.worker, False
        try:
            if w.proc.poll() is not None:  # died while idle (killed): a new one
                w.restart()
            if not w.ready:
                yield Event("waiting", message="Starting the model worker (loading the model, preparing the "
                                               "renderer) ...")
            w.conn.send(("job", self.request))
            for event in self._events():
                finished = event.final
                yield event
        except (EOFError, OSError):  # the worker died
            finished = True
            w.restart()
            yield Event("failed", message=self.why or CRASHED, reason="cancelled" if self.why else "crashed")
        finally:
            if not finished:  # the reader went away: stop the job, its worker serves the next one
                self.cancel()
            self.runner._free.put(w)

    def _events(self) -> Iterator[Event]:
        w, asked = self.worker, time.monotonic()
        while True:
            if time.monotonic() - asked > 0.25:  # whatever the events: is its client still there?
                asked = time.monotonic()
                if self.cancelled_at is None and (why := self.stop()):
                    self.cancel(why)
                if self.cancelled_at is not None and time.monotonic() - self.cancelled_at > CANCEL_GRACE_S:
                    raise EOFError  # it did not stop: stop it with its worker
            if not w.conn.poll(0.25):
                if w.proc.poll() is not None:
                    raise EOFError
                continue
            job_id, event = w.conn.recv()
            if job_id == "ready":
                w.ready = True
            elif job_id == self.request.id:
                if event.reason == "cancelled" and self.why:
                    event.message = self.why
                yield event
                if event.final:
                    return


class InProcessRunner:
    """Jobs in this process, one at a time: for ZeroGPU Spaces, where `gpu` (`spaces.GPU`) makes the job's function
    run on a GPU lent for the call. Elsewhere the web server would run the stages itself: use `LocalRunner`."""

    def __init__(self, device: str = "cpu", gpu: Callable | None = None):
        self.concurrency = 1
        self.worker = ModelWorker(device)
        self._run = gpu(duration=120)(self.worker.run) if gpu else self.worker.run
        self._ids = itertools.count()

    def start(self) -> None:
        pass

    def submit(self, request: JobRequest, stop: Callable[[], str | None] = lambda: None) -> Iterator[Event]:
        why: list[str] = []

        def cancelled() -> bool:
            if not why and (reason := stop()):
                why.append(reason)
            return bool(why)

        for event in self._run(request, cancelled):
            if event.reason == "cancelled" and why:
                event.message = why[0]
            yield event

    def close(self) -> None:
        pass


if __name__ == "__main__":  # a LocalRunner's worker process: python -m lrm.serving FD DEVICE THREADS WARM_MODEL
    from lrm.serving import worker_main as main  # (its events must pickle as lrm.serving's, not __main__'s)
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]) or None, sys.argv[4] or None)
