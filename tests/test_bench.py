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
    """bench_app.py --quick: the app starts, the jobs of concurrent clients complete, the server answers during a
    job, a killed worker's job is an error (not a lost result) and the app serves again, nothing is left after
    SIGTERM."""
    out = tmp_path / "app.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "bench_app.py", "--quick", "--json", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["startup"][0]["page_s"] > 0 and r["load"]["worker"]["ok"] == 4 and not r["load"]["worker"]["lost"]
    assert r["stall"][0]["outcome"] == "ok" and r["stall"][0]["requests"] > 10
    kill = r["kill"][0]
    assert kill["lost"] == [] and kill["ok"] + len(kill["errors"]) == kill["jobs"] and kill["served_again_after_s"]
    assert r["memory"]["big_jpeg"] == "ok" and r["memory"]["server_peak_mb"] > r["memory"]["server_mb"] > 0
    assert r["memory"]["alive_after_sigterm"] == [] and r["memory"]["left_after_sigterm"] == []
