"""Throughput of `python -m lrm.batch` on this machine: images per minute with 1 and 2 workers, one torch thread each.

    python bench_batch.py [--images 16] [--model lrm-demo-shapes] [--json PATH]

Each setting runs twice, on 1 image and on N (copies of the examples, fixed settings: 128³ mesh, 24 frames of 128 px,
the default asset), into fresh output folders; the throughput is (N - 1) / (time for N - time for 1), so Ray's start-up
and the model's loading are not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SETTINGS = ["--mesh-resolution", "128", "--views", "24", "--video-size", "128"]


def run(folder: Path, out: Path, model: str, workers: int) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "lrm.batch", str(folder), "--out", str(out), "--model", model,
                           "--workers", str(workers), "--threads-per-worker", "1", *SETTINGS], cwd=ROOT,
                          capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if done.returncode != 0:
        raise SystemExit(done.stdout[-2000:] + done.stderr[-2000:])
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--model", default="lrm-demo-shapes")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    examples = sorted((ROOT / "examples").glob("*.png"))
    one, many = tmp / "one", tmp / "many"
    one.mkdir()
    many.mkdir()
    shutil.copy(examples[0], one / examples[0].name)
    for i in range(args.images):
        shutil.copy(examples[i % len(examples)], many / f"{i:03d}-{examples[i % len(examples)].name}")
    results = {"images": args.images, "settings": SETTINGS, "cpus": os.cpu_count()}
    for workers in (1, 2):
        t1 = run(one, tmp / f"out-one-{workers}", args.model, workers)
        tn = run(many, tmp / f"out-many-{workers}", args.model, workers)
        per_minute = (args.images - 1) / (tn - t1) * 60
        results[f"workers_{workers}"] = {"seconds_1": round(t1, 1), "seconds_n": round(tn, 1),
                                         "images_per_minute": round(per_minute, 2)}
        print(f"{workers} worker(s), 1 thread each: {per_minute:.1f} images/min ({args.images} images in {tn:.1f} s, "
              f"1 image in {t1:.1f} s)", flush=True)
    results["speedup_2_vs_1"] = round(results["workers_2"]["images_per_minute"] /
                                      results["workers_1"]["images_per_minute"], 2)
    print(f"2 workers / 1 worker: {results['speedup_2_vs_1']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
