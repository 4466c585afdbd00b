"""Load test of the app: its memory for one very large photo, under concurrent sessions and over many jobs.

    python bench_app.py [--concurrent 8] [--sequential 100] [--model lrm-demo-shapes] [--json PATH]

Starts `python app.py --offline` in its own process, then through gradio_client: one job on an 8000 x 8000 JPEG
(the app's peak memory, VmHWM, is read right after it, in a fresh process), `--concurrent` sessions at once, and
`--sequential` jobs one after the other (resident memory, VmRSS, after each). Jobs use small settings (64³ mesh,
8 frames of 64 px): the point is what the server keeps, not the model's speed. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent


def memory_mb(pid: int) -> dict[str, float]:
    """Resident (VmRSS) and peak resident (VmHWM) memory of a process, in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def big_photo(path: Path, side: int = 8000) -> Path:
    """A noisy photo-like JPEG of side x side pixels: a red disc on a grey gradient."""
    yy, xx = np.mgrid[:side, :side].astype(np.float32) / side
    img = np.empty((side, side, 3), np.uint8)
    img[:] = (180 + 40 * yy)[..., None].astype(np.uint8)
    disc = (xx - 0.5) ** 2 + (yy - 0.55) ** 2 < 0.09
    img[disc] = (200, 40, 40)
    img += np.random.default_rng(0).integers(0, 8, img.shape, dtype=np.uint8)
    Image.fromarray(img).save(path, quality=92)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrent", type=int, default=8)
    p.add_argument("--sequential", type=int, default=100)
    p.add_argument("--model", default="lrm-demo-shapes")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from gradio_client import Client, handle_file

    tmp = Path(tempfile.mkdtemp(prefix="bench-app-"))
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", TMPDIR=str(tmp))
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--offline", "--port", str(port), "--model",
                               args.model, "--queue-size", str(max(20, 2 * args.concurrent))], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    from lrm.catalog import local_label
    model = local_label(args.model) if Path(args.model).expanduser().exists() else args.model  # its menu name
    settings = (model, 2.0, 64, 3.0, True, 8, 8, 64)
    results: dict = {"model": args.model}
    try:
        for _ in range(240):
            try:
                client = Client(url, verbose=False)
                break
            except Exception:  # not up yet
                time.sleep(0.5)
        else:
            raise SystemExit("the app did not start")

        def job(c, image) -> float:
            start = time.perf_counter()
            pre = c.predict(handle_file(str(image)), True, 0.85, api_name="/preprocess")
            *files, summary = c.predict(handle_file(pre), *settings, api_name="/generate")
            if not all(files) or "Done" not in summary:
                raise RuntimeError(f"job failed: {summary}")
            return time.perf_counter() - start

        start_mem = memory_mb(server.pid)
        photo = big_photo(tmp / "photo-8000.jpg")
        seconds = job(client, photo)
        results["big_jpeg"] = {"side": 8000, "seconds": round(seconds, 1), "peak_mb": round(memory_mb(server.pid)[
            "VmHWM"], 0), "before_mb": round(start_mem["VmRSS"], 0)}
        print(f"8000² JPEG: {seconds:.1f} s, app peak {results['big_jpeg']['peak_mb']:.0f} MB "
              f"(before: {start_mem['VmRSS']:.0f} MB)", flush=True)

        example = ROOT / "examples" / "three_parts.png"
        outcomes: list = [None] * args.concurrent

        def run(i):
            try:
                outcomes[i] = job(Client(url, verbose=False), example)
            except Exception as err:  # counted below
                outcomes[i] = err
        threads = [threading.Thread(target=run, args=(i,)) for i in range(args.concurrent)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        failed = [repr(o)[:200] for o in outcomes if not isinstance(o, float)]
        results["concurrent"] = {"sessions": args.concurrent, "failed": failed,
                                 "seconds": round(time.perf_counter() - start, 1),
                                 "rss_mb": round(memory_mb(server.pid)["VmRSS"], 0)}
        print(f"{args.concurrent} concurrent sessions: {args.concurrent - len(failed)} done in "
              f"{results['concurrent']['seconds']} s, RSS {results['concurrent']['rss_mb']:.0f} MB", flush=True)

        rss = []
        for i in range(args.sequential):
            job(client, example)
            rss.append(memory_mb(server.pid)["VmRSS"])
            if (i + 1) % 10 == 0:
                print(f"  {i + 1} sequential jobs, RSS {rss[-1]:.0f} MB", flush=True)
        half = len(rss) // 2
        results["sequential"] = {"jobs": len(rss), "rss_mb": [round(r) for r in rss],
                                 "growth_last_half_mb": round(rss[-1] - rss[half - 1], 0) if half else 0.0}
        print(f"{len(rss)} sequential jobs: RSS {rss[0]:.0f} -> {rss[-1]:.0f} MB, growth over the last "
              f"{len(rss) - half}: {results['sequential']['growth_last_half_mb']:.0f} MB", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    # what the app wrote (its sessions, Gradio's cache), not other libraries' markers in the temp dir
    left = [str(p.relative_to(tmp)) for folder in ("openlrm-demo", "gradio") for p in (tmp / folder).rglob("*")
            if p.is_file()]
    results["left_after_sigterm"] = left
    print(f"after SIGTERM, files of the app left in its temp dir: {len(left)}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0 if not results["concurrent"]["failed"] and not left else 1


if __name__ == "__main__":
    sys.exit(main())
