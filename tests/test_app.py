"""The Gradio app through its API (gradio_client against a launched server): full runs, errors, sessions."""

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import imageio_ffmpeg
import numpy as np
import pytest
import trimesh
import yaml
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import app
import lrm
from lrm.options import MODEL_SETTINGS

from conftest import REFCHECK, answers, wait_until

TINY = str(REFCHECK / "refcheck-tiny-1.1" / "model")
TINY_NAME = "local: refcheck-tiny-1.1/model"  # its name in the app's menu (no server path reaches a client)
ROOT = Path(__file__).parent.parent
LIGHT = lrm.JobOptions(mesh_resolution=32, n_views=8, fps=8)
# generate(pre, model, distance, mesh resolution, threshold, video, views, fps, frame size)
SETTINGS = (TINY_NAME, 2.0, 32, 3.0, True, 8, 8, 64)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    sessions = app.Sessions(tmp_path_factory.mktemp("sessions"), grace=2.0)
    demo = app.build_demo([TINY], "cpu", defaults=LIGHT, cache_examples=False, sessions=sessions)
    demo.queue(default_concurrency_limit=1)
    _, url, _ = app.launch(demo, server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, show_error=True,
                           max_file_size=f"{app.MAX_UPLOAD_MB}mb")
    yield url, sessions
    demo.close()
    demo.handlers.runner.close()


def video_codec(path):
    err = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                         capture_output=True, text=True).stderr
    return re.search(r"Video: (\w+).*?, (\w+)", err).groups()


CLIENT = """
import sys, time
from gradio_client import Client, handle_file
client = Client(sys.argv[1], verbose=False)
print(client.session_hash, flush=True)
pre = client.predict(handle_file(sys.argv[2]), True, 0.6, api_name="/preprocess")
try:
    *files, summary = client.predict(handle_file(pre), "lrm-demo-shapes", 2.0, 32, 3.0, True, int(sys.argv[3]), 8,
                                     int(sys.argv[4]), api_name="/generate")
    print("RESULT", summary.splitlines()[0], flush=True)
except Exception as err:
    print("ERROR", type(err).__name__, err, flush=True)
"""


def client_process(url, views, size):
    """A gradio_client in a process of its own (to be killed or stalled) running one job -> (process, its session)."""
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, url, str(ROOT / "examples" / "cone.png"), str(views),
                             str(size)], stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()



def test_full_run_over_the_api(server, tmp_path):
    url, sessions = server
    client = Client(url, verbose=False)
    pre = client.predict(handle_file(str(ROOT / "examples" / "cone.png")), True, 0.85, api_name="/preprocess")
    image = Image.open(pre)
    assert image.mode == "RGBA" and image.size == (512, 512) and Path(pre).name == "cone_input.png"
    f_glb, f_obj, f_ply, f_mp4, summary = client.predict(handle_file(pre), *SETTINGS, api_name="/generate")
    glb, mp4 = f_glb, f_mp4
    mesh = trimesh.load(glb, force="mesh")
    assert len(mesh.vertices) > 100 and mesh.visual.kind == "texture"  # the light, textured asset
    assert video_codec(mp4) == ("h264", "yuv420p")
    assert imageio_ffmpeg.count_frames_and_secs(mp4)[0] == 8
    # plain files, named after the input (unique per run on the server, in the run's own folder)
    assert [Path(f).name for f in (f_glb, f_obj, f_ply, f_mp4)] == ["cone.glb", "cone_obj.zip", "cone.ply", "cone.mp4"]
    assert all(Path(f).is_file() for f in (f_glb, f_obj, f_ply, f_mp4))
    assert "Done" in summary and "mesh" in summary and "video" in summary
    assert TINY_NAME in summary and str(ROOT) not in summary  # the model's name, no path
    # the session's own folder holds the run; it goes away when the session ends
    folder = sessions.root / client.session_hash
    assert any(folder.rglob("cone.glb"))
    client.close()  # its heartbeat ends: the session has gone
    assert wait_until(lambda: not folder.exists())


def test_the_api_is_documented_for_clients(server):
    url, _ = server
    api = Client(url, verbose=False).view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert set(api) == {"/preprocess", "/generate"}
    assert "/generate" in api["/preprocess"]["description"] and "/preprocess" in api["/generate"]["description"]
    assert "cache" not in api["/preprocess"]["description"].lower()  # no implementation notes
    assert [r["label"] for r in api["/generate"]["returns"]] == ["GLB", "OBJ", "PLY", "MP4", "Summary"]
    assert [p["parameter_name"] for p in api["/generate"]["parameters"]][:2] == ["image", "model"]


def test_the_readme_client_example_runs(server, tmp_path):
    """The README's gradio_client example, as written there, against this server."""
    url, _ = server
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(from gradio_client import .*?)```", text, re.S).group(1)
    code = code.replace('"http://127.0.0.1:7860/"', repr(url))
    code = code.replace('"examples/cone.png"', repr(str(ROOT / "examples" / "cone.png")))
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 (our own README)
    glb, obj, ply, mp4 = scope["files"]
    assert [Path(f).name for f in (glb, obj, ply, mp4)] == ["cone.glb", "cone_obj.zip", "cone.ply", "cone.mp4"]
    assert all(Path(f).is_file() for f in (glb, obj, ply, mp4)) and "Done" in scope["summary"]


def test_no_video_and_no_mesh_options(server):
    url, _ = server
    client = Client(url, verbose=False)
    pre = client.predict(handle_file(str(ROOT / "examples" / "torus.png")), True, 0.85, api_name="/preprocess")
    glb, obj, ply, mp4, summary = client.predict(handle_file(pre), TINY_NAME, 2.0, 32, 3.0, False, 8, 8, 64,
                                                 api_name="/generate")
    assert glb.endswith("torus.glb") and obj.endswith("torus_obj.zip") and mp4 is None and "video" not in summary


def test_bad_inputs_become_readable_errors(server, tmp_path):
    url, _ = server
    client = Client(url, verbose=False)
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    with pytest.raises(AppError, match="fully transparent"):
        client.predict(handle_file(str(tmp_path / "clear.png")), True, 0.85, api_name="/preprocess")
    Image.new("RGB", (8, 8)).save(tmp_path / "tiny.png")
    with pytest.raises(AppError, match="too small"):
        client.predict(handle_file(str(tmp_path / "tiny.png")), True, 0.85, api_name="/preprocess")
    with pytest.raises(AppError, match="upload an image"):
        client.predict(None, *SETTINGS, api_name="/generate")
    pre = client.predict(handle_file(str(ROOT / "examples" / "cone.png")), True, 0.85, api_name="/preprocess")
    with pytest.raises(AppError, match="not in the list of choices"):  # only the menu's models; not a dead app
        client.predict(handle_file(pre), "./no/such/checkpoint", *SETTINGS[1:], api_name="/generate")
    # and the app still serves
    glb, *_ = client.predict(handle_file(pre), *SETTINGS, api_name="/generate")
    assert Path(glb).is_file()


def bad_files(folder):
    """Uploads a careless or hostile user sends -> {name: path}."""
    from test_outputs import disc_image
    files = {"text.png": "this is not an image", "empty.png": b""}
    for name, text in files.items():
        (folder / name).write_bytes(text.encode() if isinstance(text, str) else text)
    for fmt in ("png", "jpg"):
        Image.fromarray(disc_image(size=300)[0]).save(folder / f"cut.{fmt}")
        data = (folder / f"cut.{fmt}").read_bytes()
        (folder / f"cut.{fmt}").write_bytes(data[: len(data) // 2])
    Image.new("1", (20000, 20000)).save(folder / "bomb.png")  # 400 megapixels in a few kB
    with open(folder / "huge.png", "wb") as f:  # above the upload limit
        f.write(b"not an image\n" * ((app.MAX_UPLOAD_MB + 5) * 2 ** 20 // 13))
    return {p.name: p for p in folder.iterdir()}


def test_bad_uploads_get_our_message_and_no_server_path(server, tmp_path):
    url, _ = server
    client = Client(url, verbose=False)
    expected = {"text.png": "not an image that can be read", "empty.png": "empty (0 bytes)",
                "cut.png": "truncated or corrupted", "cut.jpg": "truncated or corrupted", "bomb.png": "too large"}
    files = bad_files(tmp_path)
    huge = files.pop("huge.png")
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # the client knows the server's limit
        client.predict(handle_file(str(huge)), True, 0.85, api_name="/preprocess")
    with open(huge, "rb") as f:  # and the server refuses it, whatever the client
        answer = httpx.post(f"{url.rstrip('/')}/gradio_api/upload", files={"files": ("huge.png", f)}, timeout=60)
    assert answer.status_code == 413 and tempfile.gettempdir() not in answer.text
    for name, path in files.items():
        for call in ((True, 0.85, "/preprocess"), (*SETTINGS, "/generate")):
            with pytest.raises(AppError) as info:
                client.predict(handle_file(str(path)), *call[:-1], api_name=call[-1])
            message = str(info.value)
            assert expected[name] in message, (name, call[-1], message)
            assert tempfile.gettempdir() not in message and "gradio/" not in message and "Traceback" not in message
    # and the server still serves
    pre = client.predict(handle_file(str(ROOT / "examples" / "cone.png")), True, 0.85, api_name="/preprocess")
    assert Path(client.predict(handle_file(pre), *SETTINGS, api_name="/generate")[0]).is_file()


def test_unusual_pictures_straight_to_generate(server, tmp_path):
    """/generate given what /preprocess did not make: 16-bit, fully transparent; a threshold above every density."""
    url, _ = server
    client = Client(url, verbose=False)
    from test_outputs import disc_image
    grey = np.asarray(Image.fromarray(disc_image(size=256)[0]).convert("L")).astype(np.uint16) * 257
    Image.fromarray(grey).save(tmp_path / "deep.png")  # 16-bit PNG
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    glb, *_, summary = client.predict(handle_file(str(tmp_path / "deep.png")), *SETTINGS, api_name="/generate")
    assert Path(glb).is_file() and "Done" in summary
    pre = client.predict(handle_file(str(tmp_path / "deep.png")), True, 0.85, api_name="/preprocess")
    assert Image.open(pre).size == (512, 512)
    Image.new("RGBA", (256, 256), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    with pytest.raises(AppError, match="fully transparent"):
        client.predict(handle_file(str(tmp_path / "clear.png")), *SETTINGS, api_name="/generate")
    pre = client.predict(handle_file(str(ROOT / "examples" / "cone.png")), True, 0.6, api_name="/preprocess")
    glb, obj, ply, mp4, summary = client.predict(handle_file(pre), "lrm-demo-shapes", 2.0, 64, 20.0, True, 8, 8, 64,
                                                 api_name="/generate")
    assert glb is None and obj is None and Path(mp4).is_file()
    assert "Not made" in summary and "lower the threshold" in summary


def test_the_server_loads_only_its_menu(server, tmp_path):
    """No client can make the server look at a path or a Hub id outside its menu: every such value gets the same
    answer, whether the path exists or not."""
    url, _ = server
    client = Client(url, verbose=False)
    pre = client.predict(handle_file(str(ROOT / "examples" / "cone.png")), True, 0.85, api_name="/preprocess")
    answers = []
    for model in ("/etc/shadow", "/etc/nonexistent", str(REFCHECK / "refcheck-tiny-1.0" / "model"), TINY,
                  "someone/some-model", "../../etc/passwd"):
        with pytest.raises(AppError) as info:
            client.predict(handle_file(pre), model, *SETTINGS[1:], api_name="/generate")
        answers.append(str(info.value).replace(repr(model), "MODEL").replace(model, "MODEL"))
    assert len(set(answers)) == 1 and "not in the list of choices" in answers[0]


def test_every_default_works_every_time(server):
    """The call the API page shows (every parameter at its default), several times: every file is served."""
    url, _ = server
    client = Client(url, verbose=False)
    pre = client.predict(handle_file(str(ROOT / "examples" / "torus.png")), api_name="/preprocess")
    for _ in range(3):
        *files, summary = client.predict(handle_file(pre), api_name="/generate")
        assert all(Path(f).is_file() for f in files) and "Done" in summary


def test_unavailable_hub_model_falls_back_to_the_demo_model(server):
    url, _ = server
    client = Client(url, verbose=False)
    pre = client.predict(handle_file(str(ROOT / "examples" / "cone.png")), True, 0.85, api_name="/preprocess")
    glb, *_, summary = client.predict(handle_file(pre), "zxhezexin/openlrm-mix-large-1.1", *SETTINGS[1:],
                                      api_name="/generate")  # offline and not cached
    assert "lrm-demo-shapes" in summary and "not available" in summary
    fallback = trimesh.load(glb, force="mesh")
    assert len(fallback.vertices) > 100
    # the picture recentred at 0.85 for the requested model is recentred again at the demo model's 0.6: the same
    # object as from a picture prepared at 0.6 for the demo model directly (not 0.85 / 0.6 = 1.4 x larger)
    pre = client.predict(handle_file(str(ROOT / "examples" / "cone.png")), True, 0.6, api_name="/preprocess")
    glb, *_ = client.predict(handle_file(pre), "lrm-demo-shapes", *SETTINGS[1:], api_name="/generate")
    direct = trimesh.load(glb, force="mesh")
    assert fallback.extents == pytest.approx(direct.extents, rel=0.1)


def test_concurrent_sessions_get_their_own_files(server):
    url, sessions = server
    clients = [Client(url, verbose=False) for _ in range(3)]
    results = [None] * 3

    def run(i):
        try:
            pre = clients[i].predict(handle_file(str(ROOT / "examples" / "three_parts.png")), True, 0.85,
                                     api_name="/preprocess")
            results[i] = clients[i].predict(handle_file(pre), *SETTINGS, api_name="/generate")
        except Exception as err:  # reported below
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert all(isinstance(r, tuple) for r in results), [repr(r)[:500] for r in results if not isinstance(r, tuple)]
    folders = [sessions.root / c.session_hash for c in clients]
    assert len(set(folders)) == 3 and all(len(list(f.rglob("three_parts.glb"))) == 1 for f in folders)
    # a session's folder is not served to anybody: only the copies Gradio made of returned files are
    other = httpx.get(f"{url.rstrip('/')}/gradio_api/file={next(folders[0].rglob('three_parts.glb'))}")
    assert other.status_code in (403, 404)
    for c in clients:
        c.close()
    assert wait_until(lambda: not any(f.exists() for f in folders))


def test_a_job_stops_when_its_client_has_gone_and_frees_its_slot(server):
    """A killed client's job does not run on (the next user would wait behind it): with no connection from its
    session for the grace period it stops at its next frame, its folder goes, and the next job starts."""
    url, sessions = server
    proc, session = client_process(url, 200, 512)  # 200 frames of 512 px: minutes
    try:
        assert wait_until(lambda: any((sessions.root / session).rglob("cone.glb")), timeout=120)
        proc.kill()
    finally:
        proc.wait()
    stopped = len(sessions.cancelled)
    start = time.time()
    client = Client(url, verbose=False)
    pre = client.predict(handle_file(str(ROOT / "examples" / "cone.png")), True, 0.85, api_name="/preprocess")
    glb, *_, summary = client.predict(handle_file(pre), *SETTINGS, api_name="/generate")
    assert "Done" in summary and time.time() - start < 60  # not behind the killed client's 200 frames
    assert stopped == 1 or wait_until(lambda: sessions.cancelled)
    assert wait_until(lambda: not (sessions.root / session).exists())


def test_a_client_that_only_stalls_keeps_its_job(server):
    """A client that stops reading for longer than the grace period (here a stopped process), but keeps its
    connections, gets its whole result when it reads again."""
    url, sessions = server
    proc, session = client_process(url, 24, 64)
    try:
        assert wait_until(lambda: any((sessions.root / session).rglob("cone_input.png")), timeout=120)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(3 * sessions.grace)
        proc.send_signal(signal.SIGCONT)
        output = proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    assert "RESULT" in output and "ERROR" not in output, output


def test_sessions_expire_after_ttl(tmp_path):
    sessions = app.Sessions(tmp_path, ttl=0.0)
    old = sessions.new_run(None)
    time.sleep(0.05)
    new = sessions.new_run(None)  # sweeps first: the folder of `old` is older than the TTL
    assert not old.exists() and new.exists()


def test_model_menu_and_defaults():
    assert lrm.model_defaults("zxhezexin/openlrm-mix-base-1.1").video_size == 288  # known by name, not downloaded
    assert lrm.model_defaults("zxhezexin/openlrm-obj-small-1.1").video_size == 192
    assert lrm.model_defaults("zxhezexin/openlrm-large-obj-1.0").video_size == 384
    assert lrm.model_defaults("lrm-demo-shapes").foreground_ratio == 0.6  # read from its infer.json
    assert lrm.catalog.local_label(TINY) == "local: refcheck-tiny-1.1/model"
    assert not lrm.is_available("zxhezexin/openlrm-mix-base-1.1")  # offline, nothing cached
    assert lrm.is_available(TINY)
    demo = app.build_demo([TINY], "cpu", cache_examples=False)
    config = demo.get_config_file()
    dropdown = next(c for c in config["components"] if c["props"].get("elem_id") == "model")
    values = [v[1] for v in dropdown["props"]["choices"]]
    assert values[0] == TINY_NAME and dropdown["props"]["value"] == TINY_NAME
    assert not any(str(ROOT) in v for v in values)  # the menu holds names, not the server's paths
    assert values[1] == "lrm-demo-shapes" and set(lrm.RELEASED_MODELS) <= set(values)
    # offline, nothing cached: every released model says it cannot be used here, and what runs instead
    labels = dict((v, label) for label, v in dropdown["props"]["choices"])
    assert all(labels[m].endswith("(not available offline: runs lrm-demo-shapes)") for m in lrm.RELEASED_MODELS)
    assert not dropdown["props"]["allow_custom_value"]
    # a mistyped local path is left out with a line on stderr: the app still starts with what loads
    catalog = lrm.Catalog(["./no-such-dir", TINY])
    assert catalog.default == TINY_NAME and catalog.sources[TINY_NAME] == TINY and "./no-such-dir" not in \
        catalog.sources
    banner = next(c for c in config["components"] if c["props"].get("elem_id") == "banner")
    assert banner["props"]["visible"] and "Offline" in banner["props"]["value"]
    # without a local checkpoint, offline: the embedded demo model is the default, and the banner says so
    config = app.build_demo(None, "cpu", cache_examples=False).get_config_file()
    dropdown = next(c for c in config["components"] if c["props"].get("elem_id") == "model")
    banner = next(c for c in config["components"] if c["props"].get("elem_id") == "banner")
    assert dropdown["props"]["value"] == "lrm-demo-shapes" and "lrm-demo-shapes" in banner["props"]["value"]


def test_choosing_a_model_sets_all_its_controls(tmp_path):
    """Every model-dependent control follows the model that will run: frame size, mesh resolution, foreground ratio,
    and also a v1.0 checkpoint's own threshold and source distance (its kwargs['infer'])."""
    import torch
    saved = torch.load(REFCHECK / "refcheck-tiny-1.0" / "model" / "model.pth", weights_only=True)
    saved["kwargs"]["infer"] |= {"mesh_size": 96, "mesh_thres": 7.5, "source_cam_dist": 1.7}
    (tmp_path / "own").mkdir()
    torch.save(saved, tmp_path / "own" / "model.pth")
    catalog = lrm.Catalog([TINY, tmp_path / "own" / "model.pth"])
    handlers = app.Handlers("cpu", lrm.JobOptions(), app.Sessions(tmp_path / "s"), catalog, runner=None)
    controls = lambda name: {k: slider.value for k, slider in zip(MODEL_SETTINGS, handlers.on_model_change(name))}
    assert controls("local: own/model.pth") == {"foreground_ratio": 0.85, "source_distance": 1.7,
                                                "mesh_resolution": 96, "threshold": 7.5, "video_size": 32}
    assert controls(TINY_NAME) == {"foreground_ratio": 0.85, "source_distance": 2.0, "mesh_resolution": 384,
                                   "threshold": 3.0, "video_size": 192}
    # a released model offline: the demo model runs, so its settings (infer.json) are the controls'
    assert controls("zxhezexin/openlrm-mix-base-1.1") == {"foreground_ratio": 0.6, "source_distance": 2.0,
                                                          "mesh_resolution": 256, "threshold": 3.0, "video_size": 192}


def test_missing_rembg_model_is_said_once_it_is_known(monkeypatch):
    """rembg's session is made in the background at start (its first import compiles for a minute); the page's
    banner says it cannot be used once that is known."""
    module = sys.modules["lrm.preprocess"]  # (lrm.preprocess is also the function's name)
    monkeypatch.setattr(module, "_DEFAULT_REMOVER", lrm.BackgroundRemover(model_path="/nonexistent/u2net.onnx"))
    handlers = app.build_demo([TINY], "cpu", cache_examples=False).handlers
    assert handlers.remover_ready.wait(60)
    text = handlers.banner().value
    assert "**Background removal:** rembg cannot be used" in text and "GrabCut" in text


def test_spaces_gpu_decorator_is_optional():
    def f(x):
        return x + 1
    assert app.gpu(f)(1) == 2 and app.gpu(duration=5)(f)(1) == 2


def test_space_front_matter():
    text = (ROOT / "README.md").read_text()
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and meta["license"] == "cc-by-nc-4.0"
    assert isinstance(meta["python_version"], str) and re.search(r'python_version: "[\d.]+"', text)
    assert len(meta["short_description"]) <= 60


def test_main_starts_offline_serves_and_leaves_nothing_behind(tmp_path):
    """`python app.py --offline --share` with no network and a mistyped --model: the local server comes up with the
    models that load and answers; its temporary files live below TMPDIR/openlrm-demo/<pid> and go on SIGTERM; a start
    removes those of a process that was killed."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    dead = next(pid for pid in range(4_000_000, 4_100_000) if not _alive(pid))
    (tmp / "openlrm-demo" / str(dead) / "sessions" / "old").mkdir(parents=True)  # a killed app's leftovers
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HTTPS_PROXY": "http://127.0.0.1:9", "TMPDIR": str(tmp),
           "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1,localhost",
           "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1",
           "LRM_REMBG_MODEL_PATH": str(REFCHECK.parent / "rembg" / "red_segmenter.onnx")}
    port = 7900 + (int(time.time()) % 50)
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--offline", "--share", "--port", str(port),
                             "--model", "./no-such-dir", "--model", TINY], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        assert wait_until(lambda: answers(f"http://127.0.0.1:{port}/"), timeout=90)
        assert not (tmp / "openlrm-demo" / str(dead)).exists()
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        pre = client.predict(handle_file(str(ROOT / "examples" / "cone.png")), True, 0.85, api_name="/preprocess")
        glb, *_ = client.predict(handle_file(pre), *SETTINGS, api_name="/generate")
        assert Path(glb).name == "cone.glb"
        ours = tmp / "openlrm-demo" / str(proc.pid)
        assert any((ours / "sessions").rglob("cone.glb")) and any((ours / "gradio").rglob("cone_input.png"))
        time.sleep(3)  # the share attempt runs after the local URL
        assert proc.poll() is None and answers(f"http://127.0.0.1:{port}/")
    finally:
        proc.terminate()  # SIGTERM
        output = proc.communicate(timeout=30)[0]
    assert "Running on local URL" in output and "Traceback" not in output
    assert "--model ./no-such-dir: not a local checkpoint" in output
    # the share attempt was made and failed (no network), and said so; the local server went on answering above
    assert "Could not create share link" in output
    assert not (tmp / "openlrm-demo" / str(proc.pid)).exists()
    assert not any(p for p in tmp.rglob("*") if p.is_file() and p.suffix in (".glb", ".png", ".mp4", ".obj", ".ply"))


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True



@pytest.fixture(scope="module")
def in_process_server(tmp_path_factory):
    """The app with its jobs in the server's own process (the ZeroGPU path): stages hold the server's GIL."""
    from lrm.serving import InProcessRunner
    sessions = app.Sessions(tmp_path_factory.mktemp("sessions"), grace=2.0)
    demo = app.build_demo([TINY], "cpu", cache_examples=False, sessions=sessions, runner=InProcessRunner("cpu"))
    demo.queue(default_concurrency_limit=1)
    _, url, _ = app.launch(demo, server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, show_error=True)
    yield url, sessions
    demo.close()


@pytest.mark.parametrize("runner", ["worker process", "in process"])
def test_a_lost_heartbeat_no_longer_loses_the_result(runner, server, in_process_server, monkeypatch):
    """How API clients lost results: gradio_client reads its heartbeat stream with a 20 s timeout and never
    reconnects, so a server that wrote no heartbeat for 20 s (a stage holding the GIL) ended it; Gradio then ran
    unload, the app ended the session and its job, and the client got a mid-job output as its result (and every later
    call of it, "Working…"). Here the heartbeat dies in the middle of a job (the server writes one every 25 s): the
    job goes on, as the client still reads its result stream, and the client gets the whole result, then another."""
    url, sessions = server if runner == "worker process" else in_process_server
    monkeypatch.setenv("GRADIO_HEARTBEAT_INTERVAL", "25")
    client = Client(url, verbose=False)
    start, stopped = time.time(), len(sessions.cancelled)
    pre = client.predict(handle_file(str(ROOT / "examples" / "torus.png")), True, 0.6, api_name="/preprocess")
    *files, summary = client.predict(handle_file(pre), "lrm-demo-shapes", 2.0, 128, 3.0, True, 160, 25, 384,
                                     api_name="/generate")
    assert time.time() - start > 21 and not client.heartbeat.is_alive()  # the heartbeat died while the job ran
    assert summary.startswith("**Done**") and all(Path(f).is_file() for f in files)
    assert imageio_ffmpeg.count_frames_and_secs(files[3])[0] == 160
    *files, summary = client.predict(handle_file(pre), *SETTINGS, api_name="/generate")
    assert summary.startswith("**Done**") and len(sessions.cancelled) == stopped
