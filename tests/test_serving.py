"""lrm.serving and lrm.serve on their own: a model worker process and Ray Serve replicas (a real local cluster) run
jobs, stream their stages, survive a killed worker, stop a job when asked; app.py --serve's bad flags and clean exit."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import trimesh
from gradio_client import Client, handle_file

import lrm
from lrm.serving import JobRequest, LocalRunner

from conftest import answers, processes, wait_until

ROOT = Path(__file__).resolve().parents[1]
CONE = (ROOT / "examples" / "cone.png").read_bytes()
SMALL = lrm.JobOptions(mesh_resolution=48, n_views=6, video_size=64, faces=2000, texture_size=256)
LONG = lrm.JobOptions(mesh_resolution=48, n_views=200, video_size=384, texture_size=0)


def request(options=SMALL):
    return JobRequest(lrm.DEMO_MODEL, CONE, options, "cone", preprocessed=False)




def check_stream(events):
    """The events of a small job: the stages' files in order (the mesh's before the video's), then done."""
    files = [(e.stage, sorted(e.files)) for e in events if e.kind == "files"]
    assert [stage for stage, _ in files] == ["preprocess", "planes", "mesh", "asset", "video"], files
    assert dict(files)["mesh"] == ["ply"] and dict(files)["video"] == ["mp4"]
    assert set(dict(files)["asset"]) == {"glb", "obj", "mtl", "texture"}
    glb = next(e.files["glb"] for e in events if "glb" in e.files)
    assert glb[0] == "cone.glb" and len(trimesh.load(__import__("io").BytesIO(glb[1]), file_type="glb",
                                                    force="mesh").faces) > 100
    assert events[-1].kind == "done" and "triangles" in events[-1].summary


def test_the_local_worker_streams_stops_and_survives_a_crash():
    runner = LocalRunner("cpu", warm=lrm.DEMO_MODEL)
    try:
        events = list(runner.submit(request()))
        assert events[0].kind == "waiting"  # the first job waits for the worker to start, and says so
        check_stream(events)
        worker = runner._workers[0].proc.pid
        # a job asked to stop stops at its next frame, with the reason given
        start = time.time()
        events = list(runner.submit(request(LONG), stop=lambda: "gone" if time.time() - start > 3 else None))
        assert events[-1].kind == "failed" and events[-1].reason == "cancelled" and events[-1].message == "gone"
        assert time.time() - start < 30 and runner._workers[0].proc.pid == worker  # the same worker goes on
        # a worker killed mid-job: the job says so, a new worker serves the next one
        events = []
        for event in runner.submit(request(LONG)):
            events.append(event)
            if event.kind == "files" and event.stage == "mesh":
                os.kill(worker, signal.SIGKILL)
        assert events[-1].kind == "failed" and events[-1].reason == "crashed"
        assert "killed, or ran out of memory" in events[-1].message and "lower" in events[-1].message
        check_stream([e for e in runner.submit(request()) if e.kind != "waiting"])
        assert runner._workers[0].proc.pid != worker
        # a user error is the job's end, not the worker's
        bad = JobRequest(lrm.DEMO_MODEL, b"not an image", SMALL, "bad")
        events = list(runner.submit(bad))
        assert events[-1].reason == "user" and "not an image" in events[-1].message
    finally:
        pids = {w.proc.pid for w in runner._workers if w.proc}
        runner.close()
    assert not any(Path(f"/proc/{pid}").exists() and "lrm.serving" in Path(f"/proc/{pid}/cmdline").read_text()
                   for pid in pids)


def test_serve_replicas_on_a_local_cluster():
    """The deployment on a local Ray cluster, autoscaling between 1 and 2 replicas: jobs stream their stages from
    them, a second job at once makes Serve add a replica, a job can be stopped, replicas killed mid-job fail that job
    with a clear error and Serve's new ones serve the next; closing stops the cluster this process started."""
    from lrm.serve import ServeRunner
    before = processes("raylet")
    runner = ServeRunner(None, replicas=(1, 2), threads_per_replica=1, warm=lrm.DEMO_MODEL)
    runner.start()
    try:
        events = list(runner.submit(request()))
        check_stream([e for e in events if e.kind != "waiting"])
        assert len(processes("ServeReplica:openlrm-demo")) == 1 and runner.concurrency == 2
        enough, ended = threading.Event(), []
        jobs = [threading.Thread(target=lambda: ended.append(list(runner.submit(
            request(LONG), stop=lambda: "enough" if enough.is_set() else None))[-1])) for _ in range(2)]
        for job in jobs:
            job.start()
        scaled = wait_until(lambda: len(processes("ServeReplica:openlrm-demo")) == 2, timeout=120)
        enough.set()
        for job in jobs:
            job.join(timeout=120)
        assert scaled and len(ended) == 2 and all(e.reason == "cancelled" and e.message == "enough" for e in ended)
        start = time.time()
        events = list(runner.submit(request(LONG), stop=lambda: "gone" if time.time() - start > 3 else None))
        assert events[-1].reason == "cancelled" and events[-1].message == "gone" and time.time() - start < 30
        events = []
        for event in runner.submit(request(LONG)):
            events.append(event)
            if event.kind == "files" and event.stage == "mesh":
                for pid in processes("ServeReplica:openlrm-demo"):  # (the one with the job among them)
                    os.kill(pid, signal.SIGKILL)
        assert events[-1].kind == "failed" and events[-1].reason == "crashed"
        assert "killed, or ran out of memory" in events[-1].message
        check_stream([e for e in runner.submit(request()) if e.kind != "waiting"])  # on a replica Serve restarted
    finally:
        runner.close()
    assert wait_until(lambda: not (processes("raylet") - before))


def run_app(*flags, timeout=60, env=None):
    return subprocess.run([sys.executable, str(ROOT / "app.py"), "--offline", *flags], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, **(env or {})), cwd=ROOT)


def test_serve_flags_that_cannot_work_are_said_at_once():
    start = time.time()
    done = run_app("--serve", "127.0.0.1:9")
    assert done.returncode == 2 and "no Ray cluster answers at 127.0.0.1:9" in done.stderr
    assert time.time() - start < 30 and "Traceback" not in done.stderr
    done = run_app("--serve", "--replicas", "0")
    assert done.returncode == 2 and "--replicas must be at least 1" in done.stderr
    from lrm.serve import ServeError, ServeRunner, parse_replicas  # (the same path, without starting the app again)
    assert parse_replicas("2") == (2, 2) and parse_replicas("1-4") == (1, 4)
    with pytest.raises(ServeError, match=r"MIN <= MAX\), got 3-2"):
        ServeRunner(None, parse_replicas("3-2"))
    with pytest.raises(ServeError, match="--replicas takes a number or a range MIN-MAX"):
        parse_replicas("many")
    done = run_app("--serve", "--gpus-per-replica", "1", timeout=120)
    assert done.returncode == 2 and "GPUs, but the cluster has 0" in done.stderr and "Traceback" not in done.stderr


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_app_on_serve_replicas_and_a_clean_exit(tmp_path):
    """`python app.py --serve --replicas 2` through gradio_client: two jobs at once, each on a replica; SIGTERM ends
    the app with its cluster: no worker, replica or Ray process of its own left."""
    port, before = free_port(), processes("raylet")
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # (Ray's sockets need the short default TMPDIR)
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--offline", "--port", str(port), "--serve",
                             "--replicas", "2", "--threads-per-replica", "1"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        assert wait_until(lambda: answers(url), timeout=90)
        clients = [Client(url, verbose=False) for _ in range(2)]
        pre = clients[0].predict(handle_file(str(ROOT / "examples" / "cone.png")), True, 0.6, api_name="/preprocess")
        jobs = [c.submit(handle_file(pre), "lrm-demo-shapes", 2.0, 64, 3.0, True, 8, 8, 64, api_name="/generate")
                for c in clients]
        results = [job.result(timeout=240) for job in jobs]
        assert all(r[-1].startswith("**Done**") and Path(r[0]).is_file() for r in results)
        assert len(processes("ServeReplica:openlrm-demo")) == 2
    finally:
        proc.terminate()
        output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0 and "Traceback" not in output, output[-3000:]
    assert wait_until(lambda: not (processes("raylet") - before) and not processes("ServeReplica:openlrm-demo"))



@pytest.mark.slow
def test_joining_a_running_cluster_with_token_authentication(tmp_path):
    """`ray start --head` (Ray 2.60: token authentication on): without the token the app says what to set and exits
    with 2; with RAY_AUTH_MODE=token it joins, serves a job, and on SIGTERM removes its deployment and leaves the
    cluster running."""
    ray = str(Path(sys.executable).parent / "ray")
    port = free_port()
    subprocess.run([ray, "start", "--head", "--port", str(port), "--num-cpus", "2", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, capture_output=True, timeout=120)
    address = f"127.0.0.1:{port}"
    try:
        done = run_app("--serve", address, timeout=120, env={"RAY_AUTH_MODE": ""})
        assert done.returncode == 2 and "RAY_AUTH_MODE=token" in done.stderr and "auth_token" in done.stderr
        app_port = free_port()
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--offline", "--port", str(app_port),
                                 "--serve", address, "--threads-per-replica", "1"], cwd=ROOT,
                                env=dict(os.environ, RAY_AUTH_MODE="token"), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        url = f"http://127.0.0.1:{app_port}/"
        try:
            assert wait_until(lambda: answers(url), timeout=90)
            client = Client(url, verbose=False)
            pre = client.predict(handle_file(str(ROOT / "examples" / "cone.png")), True, 0.6, api_name="/preprocess")
            result = client.predict(handle_file(pre), "lrm-demo-shapes", 2.0, 64, 3.0, False, 8, 8, 64,
                                    api_name="/generate")
            assert result[-1].startswith("**Done**")
        finally:
            proc.terminate()
            output = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, output[-3000:]
        status = subprocess.run([sys.executable, "-c", "import ray; from ray import serve; ray.init(address="
                                 f"'{address}', logging_level='ERROR'); print(serve.status().applications)"],
                                capture_output=True, text=True, timeout=120,
                                env=dict(os.environ, RAY_AUTH_MODE="token"))
        assert status.returncode == 0 and "openlrm-demo" not in status.stdout, status.stderr[-2000:]
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120)
