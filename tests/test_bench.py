"""bench.py in its smoke form: every stage of both modes runs and the JSON has what the README table is built from.

Times are measured but not asserted (they are the benchmark's job); the quality of the fast path is.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_smoke_writes_the_results(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "bench.py", "--smoke", "--json", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "full job" in proc.stdout and "speed-up" in proc.stdout
    r = json.loads(out.read_text())
    job = r["full_job"]
    for key in ("speedup", "psnr_db", "chamfer_voxels", "peak_rss_gb", "reference_s", "fast_s"):
        assert key in job
    assert set(r["stages"]) == {"planes", "mesh", "asset", "video"}
    asset = r["architectures"]["small"]["asset"]
    assert 0 < asset["triangles"] <= 40000 and asset["glb_mb"] > 0 and asset["texture_psnr_db"] >= 30
    for stage in r["stages"].values():
        assert stage["reference_s"] > 0 and stage["fast_s"] > 0
    # both modes meshed a real object (an empty field would make every speed-up meaningless), the same one
    vertices = r["architectures"]["small"]["mesh_vertices"]
    assert vertices["reference"] > 500 and abs(vertices["fast"] - vertices["reference"]) <= 0.1 * vertices["reference"]
    # the reference video is extrapolated from the frames it really rendered, fewer than the orbit's
    assert 0 < r["stages"]["video"]["reference_frames_timed"] < r["architectures"]["small"]["settings"]["views"]
    assert job["psnr_db"] >= 35  # the fast frames are the reference's pictures
    assert job["chamfer_voxels"] <= 1.0
    assert 0 < job["peak_rss_gb"] < 3
    assert r["machine"]["device"] == "cpu" and r["machine"]["torch"]


def test_bench_app_smoke(tmp_path):
    """bench_app.py in small: the big photo, concurrent and sequential jobs all complete, nothing is left behind."""
    out = tmp_path / "app.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    command = [sys.executable, "bench_app.py", "--concurrent", "2", "--sequential", "2", "--json", str(out)]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["concurrent"]["failed"] == [] and len(r["sequential"]["rss_mb"]) == 2
    assert r["big_jpeg"]["peak_mb"] > r["big_jpeg"]["before_mb"] > 0  # read from the app's process
    assert r["left_after_sigterm"] == []
