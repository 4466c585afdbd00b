"""`ServeRunner`: jobs on the replicas of a Ray Serve deployment, one GPU or some CPU threads each, on this machine (a
local cluster of its own) or on a running cluster (`ray start --head`, KubeRay).

Serve's own parts do the work: a deployment of N replicas that each load the model once (`ModelReplica`), deployment
handles that stream each job's events back by reference (files too, so they reach the front end from any machine),
`max_ongoing_requests=1` (one job per replica; the rest wait in the caller's router), Serve's autoscaling between a
least and a most number of replicas (`--replicas 1-4`: a replica more while jobs wait, one less after idle minutes),
health checks that restart a dead replica. Serve does not cancel a running sync generator nor retry a request whose
replica died: a small actor holds the cancelled jobs' ids for the replicas to look up, and a dead replica's job ends
with an error that says so.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Callable, Iterator

from .serving import CRASHED, Event, JobRequest, ModelWorker

APP = "openlrm-demo"
# Autoscaling (--replicas MIN-MAX): add a replica once jobs have waited this long; remove one after this long with
# fewer jobs than replicas (a replica's start loads the model and compiles the renderer: keep it for a while).
UPSCALE_DELAY_S, DOWNSCALE_DELAY_S = 3.0, 600.0


def parse_replicas(text: str) -> tuple[int, int]:
    """--replicas' value: "N" (that many) or "MIN-MAX" (autoscaling between them) -> (least, most)."""
    least, sep, most = text.partition("-")
    try:
        return (int(least), int(most)) if sep else (int(least), int(least))
    except ValueError:
        raise ServeError(f"--replicas takes a number or a range MIN-MAX (e.g. 1-4), got {text!r}") from None


class ServeError(ValueError):
    """The deployment cannot start; the message says why and what to do."""


class Cancellations:
    """A Ray actor: the ids of the jobs whose callers asked them to stop."""

    def __init__(self):
        self.ids: set[str] = set()

    def add(self, job_id: str) -> None:
        self.ids.add(job_id)

    def has(self, job_id: str) -> bool:
        return job_id in self.ids


class ModelReplica:
    """A Serve replica: a `ModelWorker` on its device, its model loaded and the renderer prepared at start."""

    def __init__(self, device: str, threads: int | None, warm: str | None, cancellations):
        import torch
        if threads:  # Serve sets OMP_NUM_THREADS from num_cpus; torch's own count follows the option we expose
            torch.set_num_threads(threads)
        self.worker, self.cancellations = ModelWorker(device), cancellations
        if warm:
            self.worker.warm_up(warm)

    def run(self, request: JobRequest) -> Iterator[Event]:
        import ray
        asked = [0.0]

        def cancelled() -> bool:  # looked up at most once a second
            if time.monotonic() - asked[0] < 1.0:
                return False
            asked[0] = time.monotonic()
            return ray.get(self.cancellations.has.remote(request.id))

        yield from self.worker.run(request, cancelled)


def _connect(address: str | None, cpus: int, root: str) -> bool:
    """Join the cluster at `address`, or start a local one of `cpus` CPUs -> whether this process started it."""
    import ray

    from .batch import join
    # this process ends on SIGTERM through its own handler (removing the deployment), not by Ray's crash handler
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    if address is not None:
        join(address)
        return False
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}}
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env=env)
    return True


class ServeRunner:
    """Jobs on `replicas` replicas of a Serve deployment (`concurrency` = replicas). Without `address` a local cluster
    sized to this machine is started (and stopped by `close`); with one, the deployment joins it and `close` removes
    the deployment only. `start()` connects and checks at once (ServeError), and deploys in the background."""

    def __init__(self, address: str | None = None, replicas: int | tuple[int, int] = 1, gpus_per_replica: float = 0.0,
                 threads_per_replica: int | None = None, warm: str | None = None):
        least, most = (replicas, replicas) if isinstance(replicas, int) else replicas
        if least < 1 or most < least:
            raise ServeError(f"--replicas must be at least 1 (and a range MIN-MAX with MIN <= MAX), got "
                             f"{least if least == most else f'{least}-{most}'}")
        if gpus_per_replica < 0:
            raise ServeError(f"--gpus-per-replica must be 0 or more, got {gpus_per_replica}")
        self.address, self.least, self.gpus, self.warm = address, least, gpus_per_replica, warm
        self.concurrency = most  # jobs at once: the most replicas (beyond the running ones, they wait as they scale up)
        self.threads = threads_per_replica or (1 if gpus_per_replica or address else
                                               max(1, (os.cpu_count() or 1) // most))
        self.ready = threading.Event()
        self.failed: str | None = None
        self.owned = False
        self.handle = self.cancellations = None

    def start(self) -> None:
        import ray
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.owned = _connect(self.address, max(os.cpu_count() or 1, self.concurrency * self.threads), root)
        have = ray.cluster_resources().get("GPU", 0)
        if self.gpus and have < self.gpus * self.least:
            self.close()
            raise ServeError(f"{self.least} replicas of {self.gpus:g} GPUs each need {self.gpus * self.least:g} "
                             f"GPUs, but the cluster has {have:g}; leave --gpus-per-replica out to run on CPUs.")
        threading.Thread(target=self._deploy, name="serve-deploy", daemon=True).start()

    def _deploy(self) -> None:
        import ray
        from ray import serve
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its notes of every step; this app logs its own
        try:
            serve.start(proxy_location="Disabled")  # no HTTP proxy: the Gradio process is the only caller
            self.cancellations = ray.remote(num_cpus=0)(Cancellations).remote()
            options = {"num_gpus": self.gpus, "num_cpus": 1} if self.gpus else {"num_cpus": self.threads}
            scaling = {"num_replicas": self.least} if self.least == self.concurrency else {"autoscaling_config": {
                "min_replicas": self.least, "initial_replicas": self.least, "max_replicas": self.concurrency,
                "target_ongoing_requests": 1, "upscale_delay_s": UPSCALE_DELAY_S,
                "downscale_delay_s": DOWNSCALE_DELAY_S}}
            deployment = serve.deployment(ModelReplica, name="ModelReplica", max_ongoing_requests=1,
                                          health_check_period_s=2, ray_actor_options=options, **scaling)
            device = "cuda" if self.gpus else "cpu"
            serve.run(deployment.bind(device, self.threads, self.warm, self.cancellations), name=APP,
                      route_prefix=None)
            self.handle = serve.get_app_handle(APP)
        except Exception as err:  # noqa: BLE001 (said to the first job, and in the log)
            self.failed = f"the Serve deployment could not start: {type(err).__name__}: {err}"
            print(f"serve: {self.failed}", flush=True)
        self.ready.set()

    def submit(self, request: JobRequest, stop: Callable[[], str | None] = lambda: None) -> Iterator[Event]:
        """The job's events, streamed from a replica; `stop()` is asked while it runs (a reason stops it)."""
        if not self.ready.is_set():
            yield Event("waiting", message="Starting the model replicas (loading the model, preparing the "
                                           "renderer) ...")
            self.ready.wait()
        if self.failed:
            yield Event("failed", message=self.failed, reason="error")
            return
        events: queue.Queue = queue.Queue()
        response = self.handle.options(stream=True).run.remote(request)

        def read() -> None:
            from ray.exceptions import RayActorError
            from ray.serve.exceptions import BackPressureError
            try:
                for event in response:
                    events.put(event)
            except RayActorError:
                events.put(Event("failed", message=CRASHED, reason="crashed"))
            except BackPressureError:
                events.put(Event("failed", message="the app is busy; try again in a minute", reason="busy"))
            except Exception as err:  # noqa: BLE001
                events.put(Event("failed", message=f"{type(err).__name__}: {err}", reason="error"))

        threading.Thread(target=read, name=f"serve-{request.id[:8]}", daemon=True).start()
        why, finished, asked = "", False, time.monotonic()
        try:
            while not finished:
                if not why and time.monotonic() - asked > 0.25:  # whatever the events: is its client still there?
                    asked = time.monotonic()
                    if why := stop() or "":
                        self.cancellations.add.remote(request.id)
                try:
                    event = events.get(timeout=0.25)
                except queue.Empty:
                    continue
                if event.reason == "cancelled" and why:
                    event.message = why
                finished = event.final
                yield event
        finally:
            if not finished:  # the reader went away: its replica stops the job at its next progress report
                self.cancellations.add.remote(request.id)

    def close(self) -> None:
        """Remove the deployment; stop the cluster if this process started it."""
        import ray
        from ray import serve
        if not ray.is_initialized():
            return
        try:
            if self.owned:
                serve.shutdown()
            else:
                serve.delete(APP)
        finally:
            ray.shutdown()

