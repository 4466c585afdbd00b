"""`python -m lrm.batch INPUT --out OUTPUT --model M`: reconstruct a folder, list or bucket of images on a Ray cluster.

INPUT is a folder (searched recursively) or a text file listing images, OUTPUT a folder; both may be any URI that
pyarrow opens (a local path, `file://`, `s3://`, `gs://`). The pipeline runs on Ray Data: the driver lists the inputs,
CPU tasks read and preprocess them (one rembg session per worker process), a pool of actors (each loads the model once)
makes planes, mesh, asset and video and writes the files, and the driver appends one line per input to
OUTPUT/manifest.jsonl. A re-run skips the inputs whose files are all there and retries the others. Without --address a
local cluster sized to this machine is started.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path, PurePosixPath

from .__main__ import IMAGE_SUFFIXES, add_job_arguments, job_options
from .hub import DEFAULT_MODEL
from .pipeline import JobOptions, output_names

MANIFEST = "manifest.jsonl"


class BatchError(ValueError):
    """The batch cannot start; the message says why and what to do."""


# ----------------------------------------------------------------------------------------------------------------
# Files anywhere pyarrow reaches


def filesystem(uri: str):
    """(pyarrow filesystem, path in it) for a local path or a URI (file://, s3://, gs://, ...)."""
    from pyarrow import fs
    if "://" not in uri:
        return fs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    try:
        return fs.FileSystem.from_uri(uri)
    except Exception as err:  # unknown scheme, missing credentials
        raise BatchError(f"{uri}: cannot open ({err})") from None


def join(root: str, relative: str) -> str:
    return str(PurePosixPath(root) / relative)


def list_inputs(uri: str) -> list[tuple[str, str]]:
    """(image URI, output name) for INPUT: a folder's images (names keep their sub-folders) or a list file's lines
    (relative lines are relative to the list's folder; names are the files' stems, numbered where they repeat)."""
    from pyarrow import fs as pafs
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    prefix = uri[: len(uri) - len(uri.split("://", 1)[1])] if "://" in uri else ""  # "s3://" etc.
    if info.type == pafs.FileType.NotFound:
        raise BatchError(f"{uri}: no such folder or file. INPUT is a folder of images or a text file listing them.")
    if info.type == pafs.FileType.Directory:
        found = [f for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                 if f.type == pafs.FileType.File and PurePosixPath(f.path).suffix.lower() in IMAGE_SUFFIXES]
        items = [(prefix + f.path, str(PurePosixPath(f.path).relative_to(path).with_suffix(""))) for f in found]
    else:
        with fs.open_input_stream(path) as f:
            lines = [line.strip() for line in f.read().decode("utf-8", "replace").splitlines()]
        items, seen = [], {}
        for line in lines:
            if not line or line.startswith("#"):
                continue
            source = line if "://" in line or line.startswith("/") else prefix + join(str(PurePosixPath(path).parent),
                                                                                       line)
            stem = PurePosixPath(line).stem
            seen[stem] = seen.get(stem, 0) + 1
            items.append((source, stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"))
    if not items:
        raise BatchError(f"{uri} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    return sorted(items, key=lambda item: item[1])


def check_writable(uri: str) -> None:
    fs, root = filesystem(uri)
    probe = join(root, f".write-check-{uuid.uuid4().hex}")
    try:
        fs.create_dir(root, recursive=True)
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
        fs.delete_file(probe)
    except Exception as err:
        raise BatchError(f"cannot write to OUTPUT {uri} ({type(err).__name__}: {err}).") from None


def publish(local: Path, out_uri: str, relative: str) -> None:
    """Copy a finished file to OUTPUT under a temporary name, then rename it: a killed worker never leaves a
    half-written file under its final name."""
    fs, root = filesystem(out_uri)
    final = join(root, relative)
    part = f"{final}.part-{uuid.uuid4().hex[:8]}"
    fs.create_dir(str(PurePosixPath(final).parent), recursive=True)
    with fs.open_output_stream(part) as f, open(local, "rb") as src:
        while chunk := src.read(1 << 20):
            f.write(chunk)
    fs.move(part, final)


def complete(out_uri: str, name: str, job: JobOptions) -> dict[str, str] | None:
    """The outputs of `name` (key -> path relative to OUTPUT) when all the files `job` writes are in OUTPUT."""
    from pyarrow import fs as pafs
    fs, root = filesystem(out_uri)
    folder = PurePosixPath(name).parent
    names = {k: str(folder / v) for k, v in output_names(PurePosixPath(name).name, job).items()}
    infos = fs.get_file_info([join(root, v) for v in names.values()])
    return names if all(i.type == pafs.FileType.File for i in infos) else None


# ----------------------------------------------------------------------------------------------------------------
# The pipeline's steps (they run in Ray's worker processes)


def preprocess_row(row: dict, job: JobOptions) -> dict:
    """Read the image and preprocess it -> the row with its preprocessed picture (PNG bytes) or the error."""
    from . import preprocess
    start = time.perf_counter()
    row = dict(row, image=b"", error="")
    try:
        fs, path = filesystem(row["input"])
        with fs.open_input_stream(path) as f:
            data = f.read()
        with tempfile.TemporaryDirectory() as tmp:  # as a file of the same name, so the CLI's checks and messages hold
            local = Path(tmp) / PurePosixPath(path).name
            local.write_bytes(data)
            image = preprocess(local, remove_background=job.remove_background, foreground_ratio=job.foreground_ratio)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        row["image"] = buffer.getvalue()
    except (ValueError, OSError) as err:
        row["error"] = str(err)
    row["seconds"] = time.perf_counter() - start
    return row


class Reconstructor:
    """An actor of the pool: loads the model once, then makes and writes each row's files."""

    def __init__(self, model: str, device: str, threads: int, job: JobOptions, out_uri: str):
        import torch

        from . import raymarch
        from .hub import load_model
        torch.set_num_threads(threads)  # and as many for the compiled renderer: the actors share the machine's cores
        if raymarch.available():
            raymarch.numba.set_num_threads(min(threads, raymarch.numba.config.NUMBA_NUM_THREADS))
        self.model, self.job, self.out_uri = load_model(model, device=device), job, out_uri

    def __call__(self, batch: dict) -> dict:
        from PIL import Image

        from .pipeline import reconstruct
        results = {"input": [], "status": [], "outputs": [], "seconds": [], "error": []}
        for i in range(len(batch["input"])):
            start = time.perf_counter()
            name, error, outputs = str(batch["name"][i]), str(batch["error"][i]), {}
            if not error:
                try:
                    with tempfile.TemporaryDirectory() as tmp:
                        result = reconstruct(self.model, Image.open(io.BytesIO(bytes(batch["image"][i]))), tmp,
                                             self.job, name=PurePosixPath(name).name, preprocessed=True)
                        folder = PurePosixPath(name).parent
                        for key, path in result.files.items():
                            outputs[key] = str(folder / Path(path).name)
                            publish(Path(path), self.out_uri, outputs[key])
                    error = "; ".join(result.problems)
                except (ValueError, OSError) as err:
                    error = str(err)
            results["input"].append(str(batch["input"][i]))
            results["status"].append("failed" if error else "ok")
            results["outputs"].append(json.dumps(outputs))
            results["seconds"].append(float(batch["seconds"][i]) + time.perf_counter() - start)
            results["error"].append(error)
        return results


# ----------------------------------------------------------------------------------------------------------------
# The command


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lrm.batch", description=__doc__.splitlines()[0])
    p.add_argument("input", help="a folder of images (searched recursively) or a text file listing them; a local "
                   "path or a URI (file://, s3://, gs://)")
    p.add_argument("--out", required=True, help="the output folder (a local path or a URI)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="Hugging Face repo id or checkpoint, as every worker can "
                   "reach it [default: %(default)s]")
    p.add_argument("--address", default=None, help="a running Ray cluster (HOST:PORT, or ray://HOST:10001 for Ray "
                   "Client) [default: start a local one sized to this machine]")
    p.add_argument("--workers", type=int, default=None, help="actors, each with the model loaded [default: 1 per GPU "
                   "with --gpus-per-worker, else 1]")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per actor; 0 runs on CPUs [default: 0]")
    p.add_argument("--threads-per-worker", type=int, default=None,
                   help="torch threads per CPU actor [default: this machine's cores / workers on a local cluster, "
                   "else 1]")
    p.add_argument("--batch-size", type=int, default=1, help="images an actor takes at a time [default: 1]")
    add_job_arguments(p)
    return p.parse_args(argv)


def reachable(address: str, timeout: float = 5.0) -> bool:
    """Whether something answers at a Ray address's host and port (Ray's own connect retries for minutes)."""
    scheme, _, hostport = address.rpartition("://")
    host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
    try:  # Ray's GCS listens on 6379, Ray Client (ray://) on 10001
        socket.create_connection((host or "127.0.0.1", int(port or (10001 if scheme == "ray" else 6379))),
                                 timeout=timeout).close()
        return True
    except (OSError, ValueError):
        return False


def start_ray(args: argparse.Namespace) -> None:
    import ray
    from ray.data import DataContext
    if args.address:
        if args.address != "auto" and not reachable(args.address):
            raise BatchError(f"no Ray cluster answers at {args.address}: start one with `ray start --head` (its "
                             "address is printed), or leave --address out to run on this machine.")
        ray.init(address=args.address, log_to_driver=False, logging_level="ERROR")
    else:
        # one logical CPU more than the actors take: the read / preprocess tasks always get one (a pool that holds
        # every CPU starves them; seen with 2 actors on ray.init(num_cpus=2))
        ray.init(num_cpus=max(os.cpu_count() or 1, args.workers + 1), include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its execution notes; this command prints its own progress
    DataContext.get_current().enable_progress_bars = False
    if args.gpus_per_worker and ray.cluster_resources().get("GPU", 0) < args.gpus_per_worker:
        raise BatchError(f"--gpus-per-worker {args.gpus_per_worker}, but the cluster has "
                         f"{ray.cluster_resources().get('GPU', 0):g} GPUs; leave it out to run on CPUs.")


class Manifest:
    """OUTPUT/manifest.jsonl, one JSON line per input per run, kept as the results come in: appended line by line
    on a local disk; on an object store (no appends there) the whole file is rewritten every 10 s and at the end."""

    def __init__(self, out_uri: str):
        from pyarrow import fs as pafs
        self.fs, root = filesystem(out_uri)
        self.path = join(root, MANIFEST)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.lines: list[str] = []
        self.written = time.monotonic()
        if not self.local and self.fs.get_file_info(self.path).type == pafs.FileType.File:
            with self.fs.open_input_stream(self.path) as f:
                self.lines = f.read().decode().splitlines(keepends=True)

    def add(self, entry: dict) -> None:
        line = json.dumps(entry) + "\n"
        if self.local:
            with open(self.path, "a") as f:
                f.write(line)
        else:
            self.lines.append(line)
            if time.monotonic() - self.written > 10:
                self.flush()

    def flush(self) -> None:
        if not self.local:
            part = f"{self.path}.part-{uuid.uuid4().hex[:8]}"
            with self.fs.open_output_stream(part) as f:
                f.write("".join(self.lines).encode())
            self.fs.move(part, self.path)
            self.written = time.monotonic()


def run(args: argparse.Namespace) -> int:
    import ray
    from tqdm.auto import tqdm

    from .hub import model_defaults
    job = job_options(args)
    items = list_inputs(args.input)
    check_writable(args.out)
    # the model's framing unless --foreground-ratio says otherwise (preprocessing runs apart from the model)
    job = replace(job, foreground_ratio=job.foreground_ratio or model_defaults(args.model).foreground_ratio)
    todo, skipped = [], []
    for source, name in items:
        outputs = complete(args.out, name, job)
        (skipped if outputs else todo).append((source, name, outputs))
    start_ray(args)
    threads = args.threads_per_worker or (max(1, (os.cpu_count() or 1) // args.workers) if not args.address else 1)
    manifest, failed = Manifest(args.out), 0
    for source, _, outputs in skipped:
        manifest.add({"input": source, "status": "skipped", "outputs": outputs, "seconds": 0.0, "error": ""})
    bar = tqdm(total=len(todo), unit="image", file=sys.stderr, disable=not todo)
    try:
        if todo:
            ds = ray.data.from_items([{"input": s, "name": n} for s, n, _ in todo], override_num_blocks=len(todo))
            ds = ds.map(preprocess_row, fn_kwargs={"job": job}, num_cpus=0.5, max_retries=3)
            gpu = {"num_gpus": args.gpus_per_worker} if args.gpus_per_worker else {"num_cpus": 1}
            ds = ds.map_batches(Reconstructor, fn_constructor_kwargs={
                "model": args.model, "device": "cuda" if args.gpus_per_worker else "cpu", "threads": threads,
                "job": job, "out_uri": args.out}, concurrency=args.workers, batch_size=args.batch_size,
                max_restarts=-1, max_task_retries=-1, **gpu)  # a killed actor is restarted, its batch run again
            start = time.perf_counter()
            for row in ds.iter_rows():
                failed += row["status"] == "failed"
                manifest.add({"input": row["input"], "status": row["status"], "outputs": json.loads(row["outputs"]),
                              "seconds": round(row["seconds"], 3), "error": row["error"]})
                if row["status"] == "failed":
                    bar.write(f"FAILED {row['input']}: {row['error']}")
                bar.update(1)
                bar.set_postfix(failed=failed, per_minute=f"{bar.n / (time.perf_counter() - start) * 60:.1f}")
    finally:
        bar.close()
        manifest.flush()
    print(f"{len(todo) - failed} done, {failed} failed, {len(skipped)} skipped (complete already); manifest: "
          f"{join(args.out, MANIFEST)}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workers is not None and args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.workers is None:
        args.workers = 1
    if args.batch_size < 1:
        print("error: --batch-size must be at least 1", file=sys.stderr)
        return 2
    try:
        return run(args)
    except (BatchError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        import ray
        if ray.is_initialized():
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
