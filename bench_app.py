"""The app under load, as its users meet it: start-up, jobs from concurrent API clients on each way of running them,
the server's own latency while a job holds the GIL, a worker killed mid-job, memory.

    python bench_app.py [--runners in-process,worker,serve1,serve2] [--clients 4] [--jobs 20] [--quick] [--json PATH]

Each run starts `python app.py --offline` in its own process and talks to it through gradio_client, with small job
settings (64³ mesh, 8 frames of 64 px) on the embedded model: the point is the serving, not the model's speed.
- start-up: seconds from the command to the first page, to "model worker: ready" and to rembg's session, on a fresh
  install (the compiled code of rembg's pymatting and of the renderer deleted first) and on a second start;
- load, per runner ("in-process": the jobs in the web server's process, as before the worker; "worker": the default
  model worker process; "serveN": Ray Serve with N replicas): `--clients` clients at once, `--jobs` jobs in all ->
  jobs per minute and the p50 / p95 of a job's seconds;
- stall: the p99 and the worst latency of GET /config, every 50 ms, while the refcheck-tiny checkpoint's job at the
  app's defaults (384³ mesh: its mesh and asset stages hold the GIL for seconds) runs, in process and in the worker;
- kill: the worker (or one of two replicas) killed mid-job while the clients run: results lost silently (an
  intermediate output taken for a result), errors the clients got, seconds until a job succeeded again;
- memory: resident MB of the server and of its worker processes after the load; an 8000² JPEG's peak in the server;
  what is left in the app's temp folder and which of its processes live on after SIGTERM.
Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent
TINY = ROOT / "tests" / "fixtures" / "refcheck" / "refcheck-tiny-1.1" / "model"
EXAMPLE = ROOT / "examples" / "three_parts.png"
SETTINGS = ("lrm-demo-shapes", 2.0, 64, 3.0, True, 8, 8, 64)  # /generate after the image
RUNNERS = {"in-process": (["--model", "lrm-demo-shapes"], {"SPACES_ZERO_GPU": "1"}),  # (no `spaces`: no-op GPU)
           "worker": (["--model", "lrm-demo-shapes"], {}),
           "serve1": (["--model", "lrm-demo-shapes", "--serve", "--replicas", "1"], {}),
           "serve2": (["--model", "lrm-demo-shapes", "--serve", "--replicas", "2", "--threads-per-replica", "1"], {})}


def memory_mb(pid: int) -> dict[str, float]:
    """Resident (VmRSS) and peak resident (VmHWM) memory of a process, in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


def descendants(pid: int) -> list[int]:
    """The processes started by `pid`, and theirs."""
    children = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
        except (OSError, IndexError, ValueError):
            pass
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class App:
    """`python app.py --offline FLAGS` in a process of its own; its output is kept, with when each line came."""

    def __init__(self, flags: list[str], env: dict, tmp: Path):
        self.port, self.start = free_port(), time.perf_counter()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1",
                   GRADIO_TEMP_DIR=str(tmp / "gradio-cache"), **env)
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--offline", "--port", str(self.port),
                                      "--queue-size", "64", *flags], env=env, cwd=tmp, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[tuple[float, str]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append((time.perf_counter() - self.start, line.rstrip()))

    def when(self, text: str, timeout: float = 300) -> float | None:
        """Seconds from the start to the first output line holding `text`."""
        end = time.time() + timeout
        while time.time() < end:
            found = [t for t, line in self.lines if text in line]
            if found:
                return found[0]
            time.sleep(0.1)
        return None

    def page(self, timeout: float = 300) -> float:
        """Seconds from the start to the first page."""
        end = time.time() + timeout
        while time.time() < end:
            try:
                if httpx.get(self.url, timeout=2).status_code == 200:
                    return time.perf_counter() - self.start
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"the app did not serve its page: {self.lines[-20:]}")

    def stop(self) -> list[int]:
        """SIGTERM -> the pids of its processes still alive 10 s after it ended."""
        family = descendants(self.proc.pid)
        self.proc.terminate()
        self.proc.wait(timeout=90)
        end = time.time() + 10
        while (alive := [p for p in family if Path(f"/proc/{p}").exists()]) and time.time() < end:
            time.sleep(0.2)
        return alive


def job(url: str, image: Path = EXAMPLE, settings=SETTINGS) -> tuple[float, str]:
    """One user's job through both steps -> (seconds, "ok" | "error: ..." | "LOST: ...")."""
    from gradio_client import Client, handle_file
    start = time.perf_counter()
    try:
        client = Client(url, verbose=False)
        pre = client.predict(handle_file(str(image)), True, 0.6, api_name="/preprocess")
        *files, summary = client.predict(handle_file(pre), *settings, api_name="/generate")
    except Exception as err:  # an error the client was told of
        return time.perf_counter() - start, f"error: {' '.join(str(err).split())[:160]}"
    ok = summary.startswith("**Done**") and files[0] is not None
    return time.perf_counter() - start, "ok" if ok else f"LOST: {summary[:80]!r}"


def load(url: str, clients: int, jobs: int, during=None) -> dict:
    """`jobs` jobs from `clients` clients at once (`during()` is run once the first jobs are under way)."""
    results, lock, todo = [], threading.Lock(), list(range(jobs))

    def client():
        while True:
            with lock:
                if not todo:
                    return
                todo.pop()
            results.append(job(url))
    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    if during is not None:
        during()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    times = sorted(t for t, outcome in results if outcome == "ok")
    return {"jobs": jobs, "clients": clients, "ok": len(times), "seconds": round(seconds, 1),
            "per_minute": round(len(times) / seconds * 60, 1),
            "p50_s": round(statistics.median(times), 2) if times else None,
            "p95_s": round(times[min(len(times) - 1, int(0.95 * len(times)))], 2) if times else None,
            "errors": [o for _, o in results if o.startswith("error")],
            "lost": [o for _, o in results if o.startswith("LOST")]}


def stall(tmp: Path, runner: str, resolution: int = 384) -> dict:
    """GET /config latency while a GIL-holding job runs (the refcheck-tiny checkpoint at 384³)."""
    flags, env = RUNNERS[runner]
    app = App(["--model", str(TINY)], env, tmp)
    try:
        app.page()
        app.when("model worker: ready" if runner == "worker" else "Running on", 120)
        latencies, done = [], threading.Event()

        def poll():
            while not done.is_set():
                start = time.perf_counter()
                httpx.get(app.url + "config", timeout=60)
                latencies.append(time.perf_counter() - start)
                time.sleep(0.05)
        threading.Thread(target=poll, daemon=True).start()
        seconds, outcome = job(app.url, settings=("local: refcheck-tiny-1.1/model", 2.0, resolution, 3.0, True, 8, 8,
                                                         64))
        done.set()
    finally:
        app.stop()
    latencies.sort()
    return {"runner": runner, "job_s": round(seconds, 1), "outcome": outcome, "requests": len(latencies),
            "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))]),
            "max_ms": round(1000 * latencies[-1])}


def kill(tmp: Path, runner: str, clients: int) -> dict:
    """A worker (or replica) killed mid-job while `clients` clients run 2 jobs each."""
    flags, env = RUNNERS[runner]
    app = App(flags, env, tmp)
    try:
        app.page()
        job(app.url)  # warm: the worker or replicas are up
        killed_at = []

        def killer():
            time.sleep(1.5)
            name = "lrm.serving" if runner == "worker" else "ServeReplica:openlrm-demo"
            pids = [p for p in descendants(app.proc.pid) if name in Path(f"/proc/{p}/cmdline").read_bytes().decode(
                errors="replace")] if runner == "worker" else _by_name(name)
            os.kill(pids[0], signal.SIGKILL)
            killed_at.append(time.perf_counter())
        result = load(app.url, clients, 2 * clients, during=killer)
        back = None
        for _ in range(60):  # seconds from the kill until a job succeeds again
            if job(app.url)[1] == "ok":
                back = time.perf_counter() - killed_at[0]
                break
    finally:
        app.stop()
    return {"runner": runner, **{k: result[k] for k in ("jobs", "ok", "errors", "lost")},
            "served_again_after_s": round(back, 1) if back else None}


def _by_name(text: str) -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()
            and text in (e / "cmdline").read_bytes().decode(errors="replace")]


def startup(tmp: Path, fresh: bool) -> dict:
    """Seconds to the page, the worker's warm-up and rembg's session; fresh: their compiled code deleted first."""
    if fresh:
        import importlib.util
        for package in ("pymatting", "lrm"):
            folder = Path(importlib.util.find_spec(package).origin).parent
            for cache in list(folder.rglob("*.nbi")) + list(folder.rglob("*.nbc")):
                cache.unlink()
    app = App(["--model", "lrm-demo-shapes"], {}, tmp)
    try:
        return timings(app, fresh, app.page())
    finally:
        app.stop()


def timings(app: App, fresh: bool, page_s: float) -> dict:
    """An app's start-up: the seconds to its page, its worker's warm-up and rembg's session."""
    result = {"fresh": fresh, "page_s": page_s, "worker_ready_s": app.when("model worker: ready"),
              "rembg_s": app.when("background removal: ready")}
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in result.items()}


def big_photo(path: Path, side: int = 8000) -> Path:
    """A noisy photo-like JPEG of side x side pixels: a red disc on a grey gradient."""
    yy, xx = np.mgrid[:side, :side].astype(np.float32) / side
    img = np.empty((side, side, 3), np.uint8)
    img[:] = (180 + 40 * yy)[..., None].astype(np.uint8)
    img[(xx - 0.5) ** 2 + (yy - 0.55) ** 2 < 0.09] = (200, 40, 40)
    img += np.random.default_rng(0).integers(0, 8, img.shape, dtype=np.uint8)
    Image.fromarray(img).save(path, quality=92)
    return path


def memory_and_cleanup(tmp: Path, clients: int) -> dict:
    """The worker app's memory after a load and an 8000² JPEG, and what SIGTERM leaves."""
    app = App(["--model", "lrm-demo-shapes"], {"TMPDIR": str(tmp)}, tmp)
    try:
        app.page()
        result = load(app.url, clients, clients)
        before = memory_mb(app.proc.pid)["VmRSS"]
        seconds, outcome = job(app.url, big_photo(tmp / "photo-8000.jpg"))
        workers = [p for p in descendants(app.proc.pid) if "lrm.serving" in Path(f"/proc/{p}/cmdline").read_text()]
        out = {"server_mb": round(before), "server_peak_mb": round(memory_mb(app.proc.pid)["VmHWM"]),
               "worker_mb": [round(memory_mb(p)["VmRSS"]) for p in workers], "big_jpeg": outcome,
               "jobs_ok": result["ok"]}
    finally:
        out["alive_after_sigterm"] = app.stop()
    out["left_after_sigterm"] = [str(p.relative_to(tmp)) for p in (tmp / "openlrm-demo").rglob("*") if p.is_file()]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runners", default="in-process,worker,serve1,serve2")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--jobs", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="the worker only: 2 clients, 4 jobs, a 128³ stall job, "
                   "the load's app's start-up only")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    runners = ["worker"] if args.quick else args.runners.split(",")
    clients, jobs = (2, 4) if args.quick else (args.clients, args.jobs)
    tmp = Path(tempfile.mkdtemp(prefix="bench-app-"))
    results: dict = {"clients": clients, "jobs": jobs}
    try:
        results["startup"] = [] if args.quick else [startup(tmp, fresh) for fresh in (True, False)]
        results["load"] = {}
        for runner in runners:
            flags, env = RUNNERS[runner]
            app = App(flags, env, tmp)
            try:
                page_s = app.page()
                if args.quick:  # (the start-up of this app: a second start)
                    results["startup"].append(timings(app, False, page_s))
                job(app.url)  # warm
                results["load"][runner] = load(app.url, clients, jobs)
            finally:
                app.stop()
            print(f"load, {runner}:", results["load"][runner], flush=True)
        print("start-up:", results["startup"], flush=True)
        results["stall"] = [stall(tmp, r, 128 if args.quick else 384) for r in runners
                            if r in ("in-process", "worker")]
        print("stall:", results["stall"], flush=True)
        results["kill"] = [kill(tmp, r, clients) for r in runners if r in ("worker", "serve2")]
        print("kill:", results["kill"], flush=True)
        results["memory"] = memory_and_cleanup(tmp, clients)
        print("memory:", results["memory"], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    lost = sum(len(r["lost"]) for r in results["load"].values()) + sum(len(k["lost"]) for k in results["kill"])
    return 1 if lost or results["memory"]["alive_after_sigterm"] or results["memory"]["left_after_sigterm"] else 0


if __name__ == "__main__":
    sys.exit(main())
