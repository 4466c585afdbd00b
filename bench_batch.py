"""Throughput of `python -m lrm.batch` on this machine: images per minute with 1 and 2 workers, one torch thread each.

    python bench_batch.py [--images 16] [--model lrm-demo-shapes] [--json PATH]

Each setting runs twice, on 1 image and on N (copies of the examples, fixed settings: 128³ mesh, 24 frames of 128 px,
the default asset), into fresh output folders; the throughput is (N - 1) / (time for N - time for 1), so Ray's start-up
and the model's loading are not counted. Likewise the CPU time per image (from /proc/stat, the whole machine's busy
time) and the cores kept busy, which tell how much of the machine one worker already uses: a worker's torch and
renderer threads are capped, but xatlas and the H.264 encoder start threads of their own. A third setting runs one
worker with the whole job (Ray, its tasks, the encoder) confined to one core: the throughput of one core.
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


def busy_seconds() -> float | None:
    """CPU-seconds the machine has been busy since boot (all cores; Linux), or None elsewhere."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def run(folder: Path, out: Path, model: str, workers: int, one_core: bool = False) -> tuple[float, float | None]:
    """(wall seconds, busy CPU-seconds of the machine) of one batch run."""
    start, busy = time.perf_counter(), busy_seconds()
    confine = (lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})) if one_core else None
    done = subprocess.run([sys.executable, "-m", "lrm.batch", str(folder), "--out", str(out), "--model", model,
                           "--workers", str(workers), "--threads-per-worker", "1", *SETTINGS], cwd=ROOT,
                          capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"),
                          preexec_fn=confine, check=False)
    if done.returncode != 0:
        raise SystemExit(done.stdout[-2000:] + done.stderr[-2000:])
    after = busy_seconds()
    return time.perf_counter() - start, None if busy is None else after - busy


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
    settings = [("workers_1", 1, False), ("workers_2", 2, False)]
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        settings.append(("workers_1_one_core", 1, True))
    for key, workers, one_core in settings:
        t1, busy1 = run(one, tmp / f"out-one-{key}", args.model, workers, one_core)
        tn, busyn = run(many, tmp / f"out-many-{key}", args.model, workers, one_core)
        per_minute = (args.images - 1) / (tn - t1) * 60
        row = {"seconds_1": round(t1, 1), "seconds_n": round(tn, 1), "images_per_minute": round(per_minute, 2)}
        cpu = ""
        if busy1 is not None:
            row["cpu_seconds_per_image"] = round((busyn - busy1) / (args.images - 1), 2)
            row["busy_cores"] = round((busyn - busy1) / (tn - t1), 2)
            cpu = f", {row['cpu_seconds_per_image']:.1f} CPU-s per image, {row['busy_cores']:.2f} cores busy"
        results[key] = row
        where = " on one core" if one_core else ""
        print(f"{workers} worker(s){where}, 1 thread each: {per_minute:.1f} images/min ({args.images} images in "
              f"{tn:.1f} s, 1 image in {t1:.1f} s{cpu})", flush=True)
    results["speedup_2_vs_1"] = round(results["workers_2"]["images_per_minute"] /
                                      results["workers_1"]["images_per_minute"], 2)
    print(f"2 workers / 1 worker: {results['speedup_2_vs_1']:.2f}x")
    if "workers_1_one_core" in results:
        results["speedup_2_vs_one_core"] = round(results["workers_2"]["images_per_minute"] /
                                                 results["workers_1_one_core"]["images_per_minute"], 2)
        print(f"2 workers / 1 worker on one core: {results['speedup_2_vs_one_core']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
