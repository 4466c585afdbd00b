"""`python -m lrm.batch` on a local Ray cluster: manifest, resume, the CLI's files, a killed actor, bad input."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trimesh
from PIL import Image
from pyarrow.fs import FileSelector

from conftest import processes

ROOT = Path(__file__).resolve().parents[1]
LIGHT = ["--model", "lrm-demo-shapes", "--mesh-resolution", "64", "--views", "4", "--video-size", "64",
         "--faces", "3000", "--texture-size", "256"]


def batch(*args, timeout=300, env=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "lrm.batch", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)



def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture()
def images(tmp_path):
    folder = tmp_path / "in"
    (folder / "nested").mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "cone.png", folder / "cone.png")
    shutil.copy(ROOT / "examples" / "torus.png", folder / "nested" / "torus.png")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_a_folder_run_its_manifest_resume_and_the_clis_files(images, tmp_path):
    out = tmp_path / "out"
    done = batch(images, "--out", out, *LIGHT)
    assert done.returncode == 1, done.stderr[-3000:]  # the broken file failed; the others did not stop
    rows = {Path(r["input"]).name: r for r in manifest(out)}
    assert set(rows) == {"cone.png", "torus.png", "broken.png"}
    assert rows["broken.png"]["status"] == "failed" and "not an image" in rows["broken.png"]["error"]
    for name, folder in (("cone", ""), ("torus", "nested/")):
        row = rows[f"{name}.png"]
        assert row["status"] == "ok" and row["error"] == "" and row["seconds"] > 0
        assert row["outputs"]["glb"] == f"{folder}{name}.glb" and row["outputs"]["mp4"] == f"{folder}{name}.mp4"
        assert all((out / path).is_file() for path in row["outputs"].values())
    assert not list(out.rglob("*.part-*"))
    # the same input and settings through the CLI: the same bytes
    cli = subprocess.run([sys.executable, "-m", "lrm", images / "cone.png", "--out", tmp_path / "cli", *LIGHT],
                         capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert cli.returncode == 0, cli.stderr[-2000:]
    for path in rows["cone.png"]["outputs"].values():
        assert (out / path).read_bytes() == (tmp_path / "cli" / path).read_bytes(), path
    # a re-run skips what is complete and retries what failed; a file that went missing is made again
    (out / "nested" / "torus.mp4").unlink()
    again = batch(images, "--out", out, *LIGHT)
    assert again.returncode == 1 and "1 done, 1 failed, 1 skipped" in again.stdout
    second = {Path(r["input"]).name: r["status"] for r in manifest(out)[3:]}
    assert second == {"cone.png": "skipped", "torus.png": "ok", "broken.png": "failed"}
    assert (out / "nested" / "torus.mp4").is_file()


def test_a_list_file_of_images(tmp_path):
    listing = tmp_path / "list.txt"
    shutil.copy(ROOT / "examples" / "cone.png", tmp_path / "cone.png")
    listing.write_text(f"# two images\ncone.png\n\nfile://{ROOT / 'examples' / 'cylinder.png'}\n")
    done = batch(listing, "--out", tmp_path / "out", *LIGHT, "--no-video")
    assert done.returncode == 0, done.stderr[-3000:]
    assert {r["status"] for r in manifest(tmp_path / "out")} == {"ok"}
    assert (tmp_path / "out" / "cone.glb").is_file() and (tmp_path / "out" / "cylinder.glb").is_file()


def test_a_killed_actor_loses_nothing(tmp_path):
    """SIGKILL to the actor in the middle of the run: Ray restarts it and runs its images again; every input ends
    ok and no file is left half-written under its final name."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("cone", "torus", "cylinder", "rounded_box"):
        shutil.copy(ROOT / "examples" / f"{name}.png", folder / f"{name}.png")
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "lrm.batch", folder, "--out", out, *LIGHT, "--views", "40",
                             "--video-size", "128"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    killed = False
    try:
        end = time.time() + 240
        while time.time() < end and not killed and proc.poll() is None:
            actors = processes("Reconstructor")
            if actors and any(out.rglob("*_input.png")):  # the actor is at work on an image
                os.kill(min(actors), signal.SIGKILL)
                killed = True
            time.sleep(0.2)
        output = proc.communicate(timeout=300)[0]
    finally:
        proc.kill()
    assert killed, output[-3000:]
    assert proc.returncode == 0, output[-3000:]
    rows = manifest(out)
    assert sorted(Path(r["input"]).stem for r in rows) == ["cone", "cylinder", "rounded_box", "torus"]
    assert all(r["status"] == "ok" for r in rows)
    assert not list(out.rglob("*.part-*"))
    for r in rows:
        assert len(trimesh.load(out / r["outputs"]["glb"], force="mesh").faces) > 100


def test_bad_input_gets_a_clear_message(tmp_path, images):
    cases = [((tmp_path / "nothing", "--out", tmp_path / "o"), "no such folder or file"),
             ((tmp_path, "--out", tmp_path / "o", "--workers", "0"), "--workers must be at least 1")]
    (tmp_path / "empty").mkdir()
    cases.append(((tmp_path / "empty", "--out", tmp_path / "o"), "holds no images"))
    (tmp_path / "file").write_text("x")
    cases.append(((images, "--out", tmp_path / "file" / "out"), "cannot write to OUTPUT"))
    for args, message in cases:
        done = batch(*args, timeout=60)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    start = time.time()
    done = batch(images, "--out", tmp_path / "o", "--address", "127.0.0.1:9", timeout=60)
    assert done.returncode == 2 and "no Ray cluster answers at 127.0.0.1:9" in done.stderr
    assert time.time() - start < 30
    done = batch(images, "--out", tmp_path / "o", "--gpus-per-worker", "1", *LIGHT, timeout=120)
    assert done.returncode == 2 and "the cluster has 0 GPUs" in done.stderr


@pytest.fixture()
def bucket():
    """A folder on a non-local pyarrow filesystem (fsspec's in-memory one, as an object store is reached)."""
    import uuid

    import fsspec
    from pyarrow import fs

    from lrm.batch import Place
    place = Place(fs.PyFileSystem(fs.FSSpecHandler(fsspec.filesystem("memory"))), f"/bucket-{uuid.uuid4().hex}",
                  "memory://")
    place.fs.create_dir(place.path)
    return place


def test_outputs_manifest_and_lock_on_an_object_store(bucket):
    """The pool's actor writing to a non-local filesystem (here in this process): every file under its final name
    and no part left, the manifest rewritten whole (no appends there) and read back, the lock checked, then written."""
    import numpy as np
    import torch

    import lrm
    from lrm.batch import LOCK, BatchError, Lock, Manifest, Reconstructor, complete, made_from, preprocess_row
    job = lrm.JobOptions(mesh_resolution=48, n_views=2, video_size=32, faces=2000, texture_size=256).for_model(
        lrm.model_defaults(lrm.DEMO_MODEL))
    rows = [preprocess_row({"input": str(ROOT / "examples" / f"{n}.png"), "name": name}, job)
            for n, name in (("cone", "cone"), ("torus", "nested/torus"))]
    rows.append({"input": "gone.png", "name": "gone", "image": np.zeros((1, 1, 4), np.uint8), "seconds": 0.0,
                 "error": "gone.png: no such file"})
    actor = Reconstructor(lrm.DEMO_MODEL, "cpu", torch.get_num_threads(), job, bucket)
    batch = {k: [r[k] for r in rows] for k in ("input", "name", "image", "seconds", "error")}
    out = actor(batch)
    assert out["status"] == ["ok", "ok", "failed"] and out["error"][2] == "gone.png: no such file"
    outputs = [json.loads(o) for o in out["outputs"]]
    assert outputs[1]["glb"] == "nested/torus.glb" and complete(bucket, "nested/torus", job) == outputs[1]
    written = bucket.fs.get_file_info(FileSelector(bucket.path, recursive=True))
    assert not [f.path for f in written if ".part-" in f.path]
    glb = bucket.join(outputs[0]["glb"])
    with bucket.fs.open_input_stream(glb.path) as f:
        assert len(trimesh.load(io.BytesIO(f.read()), file_type="glb", force="mesh").faces) > 100

    with Lock(bucket):
        with pytest.raises(BatchError, match="another batch is writing"):
            Lock(bucket).__enter__()
        manifest = Manifest(bucket)
        for i in range(2):
            manifest.add({"input": rows[i]["input"], "name": rows[i]["name"], "status": "ok", "outputs": outputs[i],
                          "made_from": made_from({"size": 1, "mtime": 2}, job, lrm.DEMO_MODEL)})
        manifest.flush()
    assert bucket.fs.get_file_info(bucket.join(LOCK).path).type.name == "NotFound"
    with bucket.fs.open_output_stream(bucket.join("manifest.jsonl").path) as f:  # a writer killed mid-line
        f.write(("".join(manifest.lines) + '{"input": "half').encode())
    again = Manifest(bucket)
    assert again.broken == 1 and [r["name"] for r in again.records] == ["cone", "nested/torus"]
    again.add({"input": "x", "status": "ok"})
    again.flush()
    assert [json.loads(line)["input"] for line in again.lines[:2]] == [r["input"] for r in rows[:2]]
    assert Manifest(bucket).records[-1] == {"input": "x", "status": "ok"}


DIE = b"LRM-TEST-DIE"
# Loaded by every Python process of the run (PYTHONPATH): an image file holding DIE kills the process reading it, as
# an out-of-memory kill would.
SITECUSTOMIZE = f"""
import io, os
import PIL.Image
_open = PIL.Image.open
def open_or_die(fp, *args, **kwargs):
    if isinstance(fp, io.BytesIO) and {DIE!r} in fp.getvalue():
        os._exit(1)
    return _open(fp, *args, **kwargs)
PIL.Image.open = open_or_die
"""


def test_names_output_inside_input_resume_and_an_input_that_kills_its_worker(tmp_path):
    """Same-name inputs keep both results; OUTPUT inside INPUT is never read as input; an input whose worker dies is
    tried RETRIES + 1 times, then recorded as failed while the batch ends; a re-run redoes exactly what changed (the
    input, the options) or everything with --redo; a broken last manifest line is read past."""
    from lrm.batch import RETRIES
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    shutil.copy(ROOT / "examples" / "cone.png", src / "cone.png")
    Image.open(ROOT / "examples" / "torus.png").convert("RGB").save(src / "cone.jpg")
    shutil.copy(ROOT / "examples" / "cylinder.png", src / "sub" / "cylinder.png")
    (src / "dies.png").write_bytes(b"\x89PNG " + DIE)
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    out = src / "out"
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "hooks"), str(ROOT)])}
    done = batch(src, "--out", out, *LIGHT, "--no-video", env=env)
    assert done.returncode == 1, done.stderr[-3000:]
    rows = {r["name"]: r for r in manifest(out)}
    assert set(rows) == {"cone", "cone-2", "sub/cylinder", "dies"}
    assert rows["cone-2"]["outputs"]["glb"] == "cone-2.glb" and rows["cone-2"]["note"].startswith("named cone-2")
    assert rows["cone-2"]["input"].endswith("cone.png") and rows["cone"]["input"].endswith("cone.jpg")  # by path
    assert (out / "cone.glb").read_bytes() != (out / "cone-2.glb").read_bytes()
    assert rows["dies"]["status"] == "failed" and f"died {RETRIES + 1} times" in rows["dies"]["error"]
    assert all(rows[n]["status"] == "ok" for n in ("cone", "cone-2", "sub/cylinder"))
    # re-run: OUTPUT's files are no input; only the dying one is tried again; a changed input is made again
    (src / "dies.png").unlink()
    Image.open(ROOT / "examples" / "rounded_box.png").save(src / "cone.png")
    with open(out / "manifest.jsonl", "a") as f:
        f.write('{"input": "half a line')  # a run killed while writing
    again = batch(src, "--out", out, *LIGHT, "--no-video")
    assert again.returncode == 0 and "1 done, 0 failed, 2 skipped" in again.stdout, again.stdout + again.stderr
    assert "not JSON records" in again.stderr
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert lines[4] == '{"input": "half a line' and all(json.loads(line) for line in lines[5:])
    redone = {r["name"]: r["status"] for r in (json.loads(line) for line in lines[5:])}
    assert redone == {"cone": "skipped", "cone-2": "ok", "sub/cylinder": "skipped"}  # cone.png is cone-2
    # other options: everything again; --redo: everything again
    other = batch(src, "--out", out, *LIGHT, "--no-video", "--mesh-resolution", "48")
    assert other.returncode == 0 and "3 done, 0 failed, 0 skipped" in other.stdout
    redo = batch(src, "--out", out, *LIGHT, "--no-video", "--mesh-resolution", "48", "--redo")
    assert redo.returncode == 0 and "3 done, 0 failed, 0 skipped" in redo.stdout


def test_one_image_a_lock_and_ctrl_c(tmp_path):
    """INPUT may be one image; a second run on the same OUTPUT is refused while the first runs; Ctrl-C ends a run
    with one line and a readable manifest."""
    image = tmp_path / "cone.png"
    shutil.copy(ROOT / "examples" / "cone.png", image)
    out = tmp_path / "out"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    first = subprocess.Popen([sys.executable, "-m", "lrm.batch", str(image), "--out", str(out), *LIGHT, "--views",
                              "60", "--video-size", "256"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        end = time.time() + 120
        while time.time() < end and not (out / ".lrm-batch.lock").exists():
            time.sleep(0.2)
        second = batch(image, "--out", out, *LIGHT, timeout=60)
        assert second.returncode == 2 and "another batch is writing to" in second.stderr
        while time.time() < end and not processes("Reconstructor"):
            time.sleep(0.2)
        time.sleep(3)
        first.send_signal(signal.SIGINT)
        stdout, stderr = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert all(json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()) if (
        out / "manifest.jsonl").exists() else True
    assert not (out / ".lrm-batch.lock").exists()
    done = batch(image, "--out", out, *LIGHT, "--no-video")
    assert done.returncode == 0 and [r["name"] for r in manifest(out)][-1] == "cone"


def test_errors_around_the_run_are_one_line_with_status_2(tmp_path, images):
    (tmp_path / "o" / "manifest.jsonl").mkdir(parents=True)
    for args, message in [((images, "--out", tmp_path / "o2", "--model", tmp_path / "nothing"), "cannot load model"),
                          ((images, "--out", tmp_path / "o2", "--threads-per-worker", "-1"),
                           "--threads-per-worker must be at least 1"),
                          ((images, "--out", tmp_path / "o2", "--mesh-resolution", "100000"),
                           "--mesh-resolution must be at most"),
                          ((images, "--out", tmp_path / "o"), "is a folder; the manifest must be a file")]:
        done = batch(*args, timeout=60)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
