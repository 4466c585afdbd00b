"""The app in a real browser (Debian chromium driven by Playwright): upload, generate, look at every output.

Skips where chromium or playwright is not installed, except in CI (.ci/run installs both and sets CI): there a
missing browser fails the suite unless LRM_BROWSER_SKIP_REASON says why it cannot run. Set LRM_UPDATE_SCREENSHOT=1 to
refresh docs/screenshot.png from this test.
"""

import io
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

import app
import lrm

from conftest import REFCHECK

try:
    from playwright import sync_api
except ImportError:
    sync_api = None
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
MISSING = ("playwright is not installed (pip install -r requirements.txt)" if sync_api is None else
           "chromium is not installed (apt-get install chromium)" if CHROMIUM is None else None)
# Where the browser cannot run, this says why; in CI (CI set) the browser tests fail instead of skipping without it.
SKIP_REASON = os.environ.get("LRM_BROWSER_SKIP_REASON")


@pytest.fixture(scope="module", autouse=True)
def browser_available():
    if MISSING:
        if os.environ.get("CI") and not SKIP_REASON:
            pytest.fail(f"{MISSING}: the browser tests must run in CI; set LRM_BROWSER_SKIP_REASON to say why they "
                        "cannot", pytrace=False)
        pytest.skip(MISSING + (f" ({SKIP_REASON})" if SKIP_REASON else ""))

ROOT = Path(__file__).parent.parent
TINY = str(REFCHECK / "refcheck-tiny-1.1" / "model")
VIEWS, FPS = 12, 12
# Flags for headless Chromium in a sandbox without network (see docs): WebGL still works through SwiftShader.
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    sessions = app.Sessions(tmp_path_factory.mktemp("sessions"), grace=2.0)
    demo = app.build_demo([TINY], "cpu", defaults=lrm.JobOptions(mesh_resolution=64, n_views=VIEWS, fps=FPS),
                          cache_examples=False, sessions=sessions)
    demo.queue(default_concurrency_limit=1)
    _, url, _ = app.launch(demo, server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, show_error=True)
    yield url, sessions
    demo.close()
    demo.handlers.runner.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def open_page(browser, url):
    page = browser.new_page(viewport={"width": 1600, "height": 1000}, accept_downloads=True)
    page.goto(url, wait_until="load")  # not "networkidle": some Gradio 6 preloads never finish
    page.wait_for_selector("#go")
    return page


def canvas_rendered(page, selector, timeout=30.0):
    """The Model3D canvas exists even when nothing is drawn: wait until it shows many colours."""
    end = time.time() + timeout
    while time.time() < end:
        shot = np.asarray(Image.open(io.BytesIO(page.locator(selector).screenshot())).convert("RGB"))
        if len(np.unique(shot.reshape(-1, 3), axis=0)) > 200 and shot.std() > 5:
            return True
        time.sleep(0.3)
    return False


def wait_video(page, timeout=180_000):
    page.wait_for_function("() => { const v = document.querySelector('#vid video');"
                           " return v && v.readyState >= 1 && v.duration > 0; }", timeout=timeout)
    return page.evaluate("() => document.querySelector('#vid video').duration")


def test_generate_in_the_browser(server, browser, tmp_path):
    url, _ = server
    page = open_page(browser, url)
    # no image yet: an error toast, not a crash
    page.click("#go")
    page.get_by_text("Please upload an image first.").first.wait_for(timeout=15_000)

    start = time.time()
    page.locator("#inp input[type=file]").set_input_files(str(ROOT / "examples" / "three_parts.png"))
    page.wait_for_selector("#inp img")
    page.click("#go")
    page.wait_for_selector("#pre img", timeout=60_000)
    page.wait_for_selector("#m3d canvas", timeout=180_000)
    assert canvas_rendered(page, "#m3d canvas")
    mesh_s = time.time() - start
    duration = wait_video(page)
    video_s = time.time() - start
    assert duration * FPS == pytest.approx(VIEWS, abs=0.6)  # 12 frames at 12 fps
    assert page.evaluate("() => document.querySelector('#vid video').videoWidth") > 0
    page.get_by_text("Done").first.wait_for(timeout=10_000)
    print(f"click -> mesh {mesh_s:.1f} s, click -> video {video_s:.1f} s")

    saved = {}
    for name in ("glb", "obj", "ply", "mp4"):
        with page.expect_download(timeout=30_000) as info:
            page.click(f"#dl-{name}")
        saved[name] = tmp_path / f"download.{name if name != 'obj' else 'zip'}"
        info.value.save_as(saved[name])
    for name in ("glb", "ply"):
        mesh = trimesh.load(saved[name], force="mesh")
        assert len(mesh.vertices) > 100 and mesh.visual.kind == ("vertex" if name == "ply" else "texture")
    import zipfile
    with zipfile.ZipFile(saved["obj"]) as bundle:  # a textured OBJ comes with its material and texture
        bundle.extractall(tmp_path / "obj")
    obj = next((tmp_path / "obj").glob("*.obj"))
    assert trimesh.load(obj, force="mesh").visual.kind == "texture"
    assert saved["mp4"].read_bytes()[4:8] == b"ftyp"

    page.close()


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    """The app as a new user meets it offline: the embedded model, examples cached on first click."""
    cache = tmp_path_factory.mktemp("examples-cache")
    saved = os.environ.get("GRADIO_EXAMPLES_CACHE")
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(cache)
    demo = app.build_demo(None, "cpu", defaults=lrm.JobOptions(n_views=48, fps=FPS, mesh_resolution=128),
                          sessions=app.Sessions(tmp_path_factory.mktemp("demo-sessions"), grace=2.0))
    demo.queue(default_concurrency_limit=1)
    _, url, _ = app.launch(demo, server_name="127.0.0.1", prevent_thread_lock=True, quiet=True, show_error=True)
    yield url
    demo.close()
    demo.handlers.runner.close()
    if saved is None:
        os.environ.pop("GRADIO_EXAMPLES_CACHE")
    else:
        os.environ["GRADIO_EXAMPLES_CACHE"] = saved


def no_error_badge(page) -> bool:
    return page.get_by_text("Error", exact=True).count() == 0


def mesh_unobstructed(page) -> bool:
    """The mesh panel carries no progress overlay: its status tracker is hidden."""
    return page.locator("#m3d [data-testid=status-tracker]").evaluate(
        "e => e.classList.contains('hide') || e.classList.contains('hidden')")


def test_clicking_an_example_shows_its_mesh(demo_server, browser):
    page = open_page(browser, demo_server)
    page.locator("button.gallery-item").first.click()
    page.wait_for_selector("#m3d canvas", timeout=180_000)
    assert canvas_rendered(page, "#m3d canvas")
    page.get_by_text("Done").first.wait_for(timeout=60_000)
    assert no_error_badge(page)
    page.close()
    page = open_page(browser, demo_server)  # a second visitor gets the cached result
    page.locator("button.gallery-item").first.click()
    page.wait_for_selector("#m3d canvas", timeout=30_000)
    assert canvas_rendered(page, "#m3d canvas") and no_error_badge(page)
    page.close()


def test_the_mesh_shows_with_the_video_off(demo_server, browser):
    page = open_page(browser, demo_server)
    page.click("text=Settings")
    page.get_by_label("Render video").uncheck()
    page.locator("#inp input[type=file]").set_input_files(str(ROOT / "examples" / "cone.png"))
    page.wait_for_selector("#inp img")
    page.click("#go")
    page.get_by_text("Done").first.wait_for(timeout=120_000)
    page.wait_for_selector("#m3d canvas", timeout=30_000)
    assert canvas_rendered(page, "#m3d canvas") and mesh_unobstructed(page) and no_error_badge(page)
    assert page.locator("#vid video").count() == 0
    page.close()


def test_the_mesh_can_be_seen_while_the_video_renders(demo_server, browser):
    page = open_page(browser, demo_server)
    page.locator("#inp input[type=file]").set_input_files(str(ROOT / "examples" / "torus.png"))
    page.wait_for_selector("#inp img")
    page.click("#go")
    page.get_by_text("Mesh ready").first.wait_for(timeout=120_000)
    page.wait_for_selector("#m3d canvas", timeout=30_000)
    assert canvas_rendered(page, "#m3d canvas")
    # the video is still being made: its panel shows the progress, the mesh panel does not
    assert page.locator("#vid video").count() == 0 and "frames" in page.inner_text("#vid")
    assert mesh_unobstructed(page)
    wait_video(page)
    page.close()


def test_the_embedded_model_on_an_example_names_no_paths(demo_server, browser, tmp_path):
    """What a new user sees offline: the embedded model on an example, shown by name (no machine path anywhere on
    the page). LRM_UPDATE_SCREENSHOT=1 saves this page as the README's docs/screenshot.png."""
    page = open_page(browser, demo_server)
    page.locator("#inp input[type=file]").set_input_files(str(ROOT / "examples" / "three_parts.png"))
    page.wait_for_selector("#inp img")
    page.click("#go")
    page.wait_for_selector("#m3d canvas", timeout=180_000)
    assert canvas_rendered(page, "#m3d canvas")
    wait_video(page)
    page.get_by_text("Done").first.wait_for(timeout=10_000)
    text = page.inner_text("body")
    assert f"with `{lrm.DEMO_MODEL}`" in text or f"with {lrm.DEMO_MODEL}" in text
    assert str(ROOT) not in text and "/tmp/" not in text and tempfile.gettempdir() not in text
    time.sleep(1.0)
    shot = tmp_path / "screenshot.png"
    page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("LRM_UPDATE_SCREENSHOT"):
        shutil.copy(shot, ROOT / "docs" / "screenshot.png")
    page.close()


def test_bad_file_shows_error_toast(server, browser, tmp_path):
    url, _ = server
    page = open_page(browser, url)
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    page.locator("#inp input[type=file]").set_input_files(str(tmp_path / "clear.png"))
    page.wait_for_selector("#inp img")
    page.click("#go")
    page.get_by_text("fully transparent").first.wait_for(timeout=30_000)
    page.close()


def test_several_browser_sessions_and_cleanup(server, browser):
    url, sessions = server
    before = set(sessions.root.iterdir()) if sessions.root.exists() else set()
    pages = [open_page(browser, url) for _ in range(3)]
    for page, name in zip(pages, ("torus", "cone", "cylinder")):
        page.locator("#inp input[type=file]").set_input_files(str(ROOT / "examples" / f"{name}.png"))
        page.wait_for_selector("#inp img")
    for page in pages:
        page.click("#go")
    for page in pages:
        wait_video(page)
    sources = {page.evaluate("() => document.querySelector('#vid video').currentSrc") for page in pages}
    assert len(sources) == 3  # each session got its own result (Gradio serves identical files once, by content)
    folders = set(sessions.root.iterdir()) - before
    assert len(folders) == 3
    for page in pages:
        page.close()
    end = time.time() + 20
    while time.time() < end and any(f.exists() for f in folders):
        time.sleep(0.3)
    assert not any(f.exists() for f in folders)
