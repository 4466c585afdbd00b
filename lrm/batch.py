"""`python -m lrm.batch INPUT --out OUTPUT [--model M]`: reconstruct a folder, list or bucket of images on a Ray cluster.

INPUT is a folder (searched recursively), a text file listing images, or one image; OUTPUT a folder; both may be any
URI that pyarrow opens (a local path, `file://`, `s3://`, `gs://`). The pipeline runs on Ray Data: the driver lists
the inputs, CPU tasks read and preprocess them, a pool of actors (each loads the model once) makes planes, mesh, asset
and video and writes the files, and the driver appends one line per input to OUTPUT/manifest.jsonl, with what the
outputs were made from. A re-run skips the inputs made from the same input file and options, and redoes the others.
Without --address a local cluster sized to this machine is started.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import socket
import sys
import time
import traceback
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .cli import IMAGE_SUFFIXES, Input, add_job_arguments, error, is_image, job_options, name_inputs
from .hub import DEFAULT_MODEL, choose_model, is_available, model_defaults
from .options import JobOptions
from .pipeline import describe_error, output_names

MANIFEST = "manifest.jsonl"
LOCK = ".lrm-batch.lock"
# An input whose worker dies (killed, out of memory) is tried this many times more, by Ray itself (the preprocessing
# task's max_retries, the actor task's max_task_retries), then recorded as failed; the batch goes on.
RETRIES = 2


class BatchError(ValueError):
    """The batch cannot start; the message says why and what to do."""


# ----------------------------------------------------------------------------------------------------------------
# Files anywhere pyarrow reaches


@dataclass(frozen=True)
class Place:
    """A file or folder: a pyarrow filesystem, the path in it, and the URI's scheme ("s3://"; "" for a local path)."""
    fs: Any
    path: str
    scheme: str = ""

    @classmethod
    def of(cls, uri: str) -> "Place":
        from pyarrow import fs
        if "://" not in uri:
            return cls(fs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri)))
        try:
            filesystem, path = fs.FileSystem.from_uri(uri)
        except Exception as err:  # unknown scheme, missing credentials
            raise BatchError(f"{uri}: cannot open ({err})") from None
        return cls(filesystem, path, uri.split("://", 1)[0] + "://")

    def join(self, relative: str) -> "Place":
        return Place(self.fs, str(PurePosixPath(self.path) / relative), self.scheme)

    @property
    def uri(self) -> str:
        return self.scheme + self.path

    @property
    def local(self) -> bool:
        from pyarrow import fs
        return isinstance(self.fs, fs.LocalFileSystem)

    def info(self):
        return self.fs.get_file_info(self.path)

    def contains(self, other: "Place") -> bool:
        """Whether `other` is this folder or lies below it (on the same filesystem)."""
        return type(other.fs) is type(self.fs) and (other.path == self.path or other.path.startswith(
            self.path.rstrip("/") + "/"))


def list_inputs(source: Place, exclude: Place | None = None) -> list[tuple[Input, dict]]:
    """(input, its identity: size and modification time) for INPUT: one image, a folder's images (names keep their
    sub-folders; nothing under `exclude`, the OUTPUT folder) or a list file's lines (relative lines are relative to
    the list's folder; names are the files' stems). Names follow `lrm.cli.name_inputs`."""
    from pyarrow import fs as pafs
    info = source.info()
    if info.type == pafs.FileType.NotFound:
        raise BatchError(f"{source.uri}: no such folder or file. INPUT is a folder of images, a text file listing "
                         "them, or one image.")
    if info.type == pafs.FileType.Directory:
        files = sorted((f for f in source.fs.get_file_info(pafs.FileSelector(source.path, recursive=True))
                        if f.type == pafs.FileType.File and is_image(f.path)
                        and not (exclude and exclude.contains(Place(source.fs, f.path)))), key=lambda f: f.path)
        found = [(source.scheme + f.path, str(PurePosixPath(f.path).relative_to(source.path).with_suffix("")))
                 for f in files]
    elif is_image(source.path):
        files, found = [info], [(source.uri, PurePosixPath(source.path).stem)]
    else:
        with source.fs.open_input_stream(source.path) as f:
            lines = [line.strip() for line in f.read().decode("utf-8", "replace").splitlines()]
        found = [(line if "://" in line or line.startswith("/") else source.scheme + str(
            PurePosixPath(source.path).parent / line), PurePosixPath(line).stem)
            for line in lines if line and not line.startswith("#")]
        files = [Place.of(uri).info() for uri, _ in found]
    if not found:
        raise BatchError(f"{source.uri} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    identity = [{"size": f.size, "mtime": f.mtime_ns} if f.type == pafs.FileType.File else None for f in files]
    return list(zip(name_inputs(found), identity))


def check_writable(out: Place) -> None:
    probe = out.join(f".write-check-{uuid.uuid4().hex}")
    try:
        out.fs.create_dir(out.path, recursive=True)
        with out.fs.open_output_stream(probe.path) as f:
            f.write(b"ok")
        out.fs.delete_file(probe.path)
    except Exception as err:
        raise BatchError(f"cannot write to OUTPUT {out.uri} ({type(err).__name__}: {err}).") from None


def write_outputs(files: dict[str, Path], out: Place, folder: str) -> dict[str, str]:
    """Move or copy a job's files (key -> local path) to OUTPUT/folder -> key -> path relative to OUTPUT. Each file
    gets its final name only when complete (a rename): a killed worker never leaves a half-written file there."""
    written = {}
    for key, path in files.items():
        written[key] = str(PurePosixPath(folder) / path.name)
        final = out.join(written[key])
        if out.local:  # made in a folder inside OUTPUT: a rename, no copy
            os.replace(path, final.path)
            continue
        part = f"{final.path}.part-{uuid.uuid4().hex[:8]}"
        out.fs.create_dir(str(PurePosixPath(final.path).parent), recursive=True)
        with out.fs.open_output_stream(part) as f, open(path, "rb") as src:
            while chunk := src.read(1 << 20):
                f.write(chunk)
        out.fs.move(part, final.path)
    return written


def sweep_parts(out: Place) -> None:
    """Remove what killed workers left in OUTPUT: their work folders and half-copied files (`.part-*`). Only a run
    that holds OUTPUT's lock calls this, so no other run is writing them."""
    from pyarrow import fs as pafs
    for info in out.fs.get_file_info(pafs.FileSelector(out.path, recursive=True, allow_not_found=True)):
        if ".part-" in info.base_name and out.fs.get_file_info(info.path).type != pafs.FileType.NotFound:
            if info.type == pafs.FileType.Directory:
                out.fs.delete_dir(info.path)
            else:
                out.fs.delete_file(info.path)


def complete(out: Place, name: str, job: JobOptions) -> dict[str, str] | None:
    """The outputs of `name` (key -> path relative to OUTPUT) when all the files `job` writes are in OUTPUT."""
    from pyarrow import fs as pafs
    folder = PurePosixPath(name).parent
    names = {k: str(folder / v) for k, v in output_names(PurePosixPath(name).name, job).items()}
    infos = out.fs.get_file_info([out.join(v).path for v in names.values()])
    return names if all(i.type == pafs.FileType.File for i in infos) else None


# ----------------------------------------------------------------------------------------------------------------
# The pipeline's steps (they run in Ray's worker processes)


def preprocess_row(row: dict, job: JobOptions) -> dict:
    """Read the image once and preprocess it -> the row with its preprocessed picture (RGBA uint8 array) or the
    error."""
    import numpy as np

    from .preprocess import load_image, preprocess
    start = time.perf_counter()
    row = dict(row, error="")
    try:
        place = Place.of(row["input"])
        with place.fs.open_input_stream(place.path) as f:
            data = f.read()
        image = preprocess(load_image(data, name=PurePosixPath(place.path).name),
                           remove_background=job.remove_background, foreground_ratio=job.foreground_ratio)
        row["image"] = np.asarray(image)
    except Exception as err:  # noqa: BLE001 (this input's alone; the message goes to the manifest)
        row["image"], row["error"] = np.zeros((1, 1, 4), np.uint8), describe_error(err)
    row["seconds"] = time.perf_counter() - start
    return row


class Reconstructor:
    """An actor of the pool: loads the model once, then makes and writes each row's files."""

    def __init__(self, model: str, device: str, threads: int, job: JobOptions, out: Place):
        import torch

        from . import raymarch
        from .hub import load_model
        torch.set_num_threads(threads)  # and as many for the compiled renderer: the actors share the machine's cores
        if raymarch.available():
            raymarch.numba.set_num_threads(min(threads, raymarch.numba.config.NUMBA_NUM_THREADS))
        self.model, self.job, self.out = load_model(model, device=device), job, out

    def __call__(self, batch: dict) -> dict:
        results = {"input": [], "status": [], "outputs": [], "seconds": [], "error": []}
        for i in range(len(batch["input"])):
            start = time.perf_counter()
            name, error, outputs = str(batch["name"][i]), str(batch["error"][i]), {}
            if not error:
                try:
                    outputs, error = self.make(batch["image"][i], name)
                except Exception as err:  # noqa: BLE001 (this input's alone)
                    error = describe_error(err)
            results["input"].append(str(batch["input"][i]))
            results["status"].append("failed" if error else "ok")
            results["outputs"].append(json.dumps(outputs))
            results["seconds"].append(float(batch["seconds"][i]) + time.perf_counter() - start)
            results["error"].append(error)
        return results

    def make(self, image, name: str) -> tuple[dict[str, str], str]:
        """Reconstruct one preprocessed picture and write its files -> (outputs, problems)."""
        import shutil
        import tempfile

        from .pipeline import reconstruct
        folder = str(PurePosixPath(name).parent)
        work = Path(self.out.join(f"{folder}/.part-{uuid.uuid4().hex[:8]}").path) if self.out.local else \
            Path(tempfile.mkdtemp(prefix="lrm-batch-"))
        try:
            result = reconstruct(self.model, image, work, self.job, name=PurePosixPath(name).name, preprocessed=True)
            return write_outputs(result.files, self.out, folder), "; ".join(result.problems)
        finally:
            shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# The manifest and the lock


def made_from(identity: dict | None, job: JobOptions, model: str) -> dict:
    """What an input's outputs are made from: its file's size and modification time, the job's options, the model."""
    return {"input": identity, "options": json.loads(json.dumps(asdict(job))), "model": model}


class Manifest:
    """OUTPUT/manifest.jsonl, one JSON line per input per run, kept as the results come in: appended line by line
    on a local disk; on an object store (no appends there) the whole file is rewritten every 10 s and at the end.
    Lines that are not JSON (a writer killed mid-line) are read past with a warning."""

    def __init__(self, out: Place):
        from pyarrow import fs as pafs
        self.out, self.place = out, out.join(MANIFEST)
        info = self.place.info()
        if info.type == pafs.FileType.Directory:
            raise BatchError(f"{self.place.uri} is a folder; the manifest must be a file there. Move the folder away.")
        text = ""
        if info.type == pafs.FileType.File:
            with out.fs.open_input_stream(self.place.path) as f:
                text = f.read().decode("utf-8", "replace")
        self.records, self.broken = [], 0
        for line in text.splitlines():
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError
                self.records.append(record)
            except ValueError:
                self.broken += bool(line.strip())
        if self.broken:
            print(f"warning: {self.broken} line(s) of {self.place.uri} are not JSON records (a run killed while "
                  "writing?); read past them", file=sys.stderr)
        self.lines = [] if out.local else [line + "\n" for line in text.splitlines()]
        self.newline = bool(text) and not text.endswith("\n")  # the next record must start on a line of its own
        self.written = time.monotonic()

    def last_ok(self) -> dict[str, dict]:
        """The last record with status ok (or skipped) per input."""
        return {r.get("input"): r for r in self.records if r.get("status") in ("ok", "skipped")}

    def add(self, entry: dict) -> None:
        line = ("\n" if self.newline else "") + json.dumps(entry) + "\n"
        self.newline = False
        if self.out.local:
            with open(self.place.path, "a") as f:
                f.write(line)  # one write of one whole line
        else:
            self.lines.append(line)
            if time.monotonic() - self.written > 10:
                self.flush()

    def flush(self) -> None:
        if not self.out.local:
            part = f"{self.place.path}.part-{uuid.uuid4().hex[:8]}"
            with self.out.fs.open_output_stream(part) as f:
                f.write("".join(self.lines).encode())
            self.out.fs.move(part, self.place.path)
            self.written = time.monotonic()


class Lock:
    """OUTPUT/.lrm-batch.lock while a run writes there: a second run is refused. On a local disk the lock is taken
    atomically and a lock left by a dead process of this machine is taken over; on an object store (no atomic
    create) it is checked, then written."""

    def __init__(self, out: Place):
        self.place = out.join(LOCK)
        self.held = False

    def __enter__(self):
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            owner = self._owner()
            if owner is None or self._dead(owner):
                if owner is not None:
                    self.place.fs.delete_file(self.place.path)
                if self._create(json.dumps(me).encode()):
                    self.held = True
                    return self
        owner = self._owner() or {}
        raise BatchError(f"another batch is writing to {self.place.uri.rsplit('/', 1)[0]} (process {owner.get('pid')} "
                         f"on {owner.get('host')} since {owner.get('since')}); wait for it to end, or delete "
                         f"{self.place.uri} if it is not running.")

    def __exit__(self, *exc):
        if self.held:
            self.place.fs.delete_file(self.place.path)

    def _owner(self) -> dict | None:
        try:
            with self.place.fs.open_input_stream(self.place.path) as f:
                return json.loads(f.read() or b"{}")
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _dead(owner: dict) -> bool:
        if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
            return False
        try:
            os.kill(owner["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
        return False

    def _create(self, data: bytes) -> bool:
        if self.place.local:
            try:
                fd = os.open(self.place.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        with self.place.fs.open_output_stream(self.place.path) as f:
            f.write(data)
        return True


# ----------------------------------------------------------------------------------------------------------------
# The command


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lrm.batch", description=__doc__.splitlines()[0])
    p.add_argument("input", help="a folder of images (searched recursively), a text file listing them, or one image; "
                   "a local path or a URI (file://, s3://, gs://)")
    p.add_argument("--out", required=True, help="the output folder (a local path or a URI)")
    p.add_argument("--model", default=None, help="Hugging Face repo id or checkpoint, as every worker can reach it "
                   f"[default: {DEFAULT_MODEL}, or the embedded demo model when that cannot be obtained]")
    p.add_argument("--address", default=None, help="a running Ray cluster (HOST:PORT, or ray://HOST:10001 for Ray "
                   "Client) [default: start a local one sized to this machine]")
    p.add_argument("--workers", type=int, default=1, help="actors, each with the model loaded [default: 1]")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per actor; 0 runs on CPUs [default: 0]")
    p.add_argument("--threads-per-worker", type=int, default=None,
                   help="torch threads per CPU actor [default: this machine's cores / workers on a local cluster, "
                   "else 1]")
    p.add_argument("--batch-size", type=int, default=1, help="images an actor takes at a time [default: 1]")
    p.add_argument("--redo", action="store_true", help="make every input again, even those complete already")
    add_job_arguments(p)
    return p.parse_args(argv)


def check_flags(args: argparse.Namespace) -> None:
    for flag, value in (("--workers", args.workers), ("--batch-size", args.batch_size),
                        ("--threads-per-worker", args.threads_per_worker)):
        if value is not None and value < 1:
            raise BatchError(f"{flag} must be at least 1, got {value}")
    if not (math.isfinite(args.gpus_per_worker) and args.gpus_per_worker >= 0):
        raise BatchError(f"--gpus-per-worker must be 0 or more, got {args.gpus_per_worker}")


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


def join(address: str, **kwargs) -> None:
    """`ray.init` joining the cluster at `address`, with a clear BatchError when it cannot: nothing answers there
    (said within seconds; Ray's own connect retries for minutes), or the cluster wants a token."""
    import ray
    if address != "auto" and not reachable(address):
        raise BatchError(f"no Ray cluster answers at {address}: start one with `ray start --head` (its address is "
                         "printed), or leave the address out to run on this machine.")
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR", **kwargs)
    except ConnectionError as err:
        token = "" if os.environ.get("RAY_AUTH_MODE") == "token" else (
            " Ray 2.60's clusters use token authentication by default: set RAY_AUTH_MODE=token and give this machine "
            "the cluster's token (the head's ~/.ray/auth_token, or RAY_AUTH_TOKEN_PATH).")
        raise BatchError(f"could not join the Ray cluster at {address} ({err}).{token}") from None


def start_ray(args: argparse.Namespace) -> None:
    import ray
    from ray.data import DataContext
    if args.address:
        join(args.address)
    else:
        # one logical CPU more than the actors take: the read / preprocess tasks always get one (a pool that holds
        # every CPU starves them; seen with 2 actors on ray.init(num_cpus=2))
        ray.init(num_cpus=max(os.cpu_count() or 1, args.workers + 1), include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # its notes and the tracebacks of the inputs we record
    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.max_errored_blocks = -1  # an input that fails for good (after RETRIES) is recorded; the others go on
    if args.gpus_per_worker and ray.cluster_resources().get("GPU", 0) < args.gpus_per_worker:
        raise BatchError(f"--gpus-per-worker {args.gpus_per_worker:g}, but the cluster has "
                         f"{ray.cluster_resources().get('GPU', 0):g} GPUs; leave it out to run on CPUs.")


def plan(items: list[tuple[Input, dict]], manifest: Manifest, out: Place, job: JobOptions, model: str,
         redo: bool) -> tuple[list[tuple[Input, dict]], list[tuple[Input, dict]]]:
    """(to do, to skip): an input is skipped when its last ok record was made from the same input file (size and
    modification time), options and model, under the same names, and those files are all in OUTPUT."""
    done = {} if redo else manifest.last_ok()
    todo, skipped = [], []
    for item, identity in items:
        before = done.get(item.source)
        same = before is not None and identity is not None and before.get("made_from") == made_from(
            identity, job, model) and before.get("outputs") == complete(out, item.name, job)
        (skipped if same else todo).append((item, identity))
    return todo, skipped


def run(args: argparse.Namespace) -> int:
    job, out = job_options(args), Place.of(args.out)
    items = list_inputs(Place.of(args.input), exclude=out)
    choice = choose_model(args.model or DEFAULT_MODEL, fallback=args.model is None)
    model = str(Path(choice.source).expanduser().resolve()) if Path(choice.source).expanduser().exists() else \
        choice.source  # as every worker can reach it
    try:
        if not is_available(model):
            raise BatchError("not a local checkpoint, not in the local Hugging Face cache, and the Hub cannot be "
                             "reached now")
        job = job.for_model(model_defaults(model))  # the model's settings, read without its weights
    except (ValueError, FileNotFoundError) as err:
        raise BatchError(f"cannot load model {choice.requested!r}: {err}") from None
    if choice.note:
        print(f"NOTE: no --model given; {choice.note}", file=sys.stderr)
    check_writable(out)
    with Lock(out):
        manifest = Manifest(out)
        todo, skipped = plan(items, manifest, out, job, model, args.redo)
        for item, identity in skipped:
            manifest.add({"input": item.source, "name": item.name, "status": "skipped",
                          "outputs": complete(out, item.name, job), "seconds": 0.0, "error": "",
                          "made_from": made_from(identity, job, model)})
        sweep_parts(out)
        try:
            failed = process(args, todo, job, model, out, manifest) if todo else 0
        finally:
            manifest.flush()
            sweep_parts(out)
    print(f"{len(todo) - failed} done, {failed} failed, {len(skipped)} skipped (complete already); manifest: "
          f"{out.join(MANIFEST).uri}")
    return 1 if failed else 0


def process(args: argparse.Namespace, todo: list[tuple[Input, dict]], job: JobOptions, model: str, out: Place,
            manifest: Manifest) -> int:
    """Run the inputs to do on Ray, recording each in the manifest as it comes -> how many failed."""
    import ray
    from tqdm.auto import tqdm
    start_ray(args)
    threads = args.threads_per_worker or (max(1, (os.cpu_count() or 1) // args.workers) if not args.address else 1)
    items = {item.source: (item, identity) for item, identity in todo}
    ds = ray.data.from_items([{"input": i.source, "name": i.name} for i, _ in todo], override_num_blocks=len(todo))
    ds = ds.map(preprocess_row, fn_kwargs={"job": job}, num_cpus=0.5, max_retries=RETRIES)
    resources = {"num_gpus": args.gpus_per_worker} if args.gpus_per_worker else {"num_cpus": 1}
    # a killed actor is restarted and its task run again, RETRIES times per input at most (then the input is recorded
    # as failed); the restarts are bounded as well: enough for every input to kill it that often
    ds = ds.map_batches(Reconstructor, fn_constructor_kwargs={
        "model": model, "device": "cuda" if args.gpus_per_worker else "cpu", "threads": threads, "job": job,
        "out": out}, concurrency=args.workers, batch_size=args.batch_size,
        max_restarts=(RETRIES + 1) * len(todo), max_task_retries=RETRIES, **resources)
    failed, start = 0, time.perf_counter()
    bar = tqdm(total=len(todo), unit="image", file=sys.stderr)

    def record(item: Input, identity: dict, status: str, outputs: dict, seconds: float, why: str) -> None:
        nonlocal failed
        failed += status == "failed"
        manifest.add({"input": item.source, "name": item.name, "status": status, "outputs": outputs,
                      "seconds": round(seconds, 3), "error": why, "made_from": made_from(identity, job, model)}
                     | ({"note": item.note} if item.note else {}))
        if status == "failed":
            bar.write(f"FAILED {item.source}: {why}")
        bar.update(1)
        bar.set_postfix(failed=failed, per_minute=f"{bar.n / (time.perf_counter() - start) * 60:.1f}")

    try:
        for row in ds.iter_rows():
            item, identity = items.pop(row["input"])
            record(item, identity, row["status"], json.loads(row["outputs"]), row["seconds"], row["error"])
        for item, identity in items.values():  # no row came back: its worker died every time
            record(item, identity, "failed", {}, 0.0, f"the worker making it died {RETRIES + 1} times (killed, or "
                   "out of memory?); lower --mesh-resolution, --video-size or --texture-size, or use fewer --workers")
    finally:
        bar.close()
    return failed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_flags(args)
        import ray  # noqa: F401
    except BatchError as err:
        return error(str(err))
    except ImportError:
        return error("the batch job runs on Ray: pip install 'ray[data]'")
    try:
        return run(args)
    except ValueError as err:  # BatchError, a bad option or input
        return error(str(err))
    except KeyboardInterrupt:
        print("interrupted: the manifest holds the inputs done so far; run again to do the rest", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 (one line unless --debug)
        if args.debug:
            traceback.print_exc()
        return error(f"{describe_error(err)} (--debug shows where)")
    finally:
        import ray
        if ray.is_initialized():
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
