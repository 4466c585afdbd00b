"""Gradio demo: drag an image in, get the preprocessed image, an interactive mesh and an orbit video side by side.

    python app.py [--model ID_OR_PATH ...] [--device cpu|cuda] [--host H] [--port P] [--share] [--auth user:pass]
                  [--queue-size N] [--offline]

`build_demo()` returns the `gr.Blocks` without launching it; `main()` parses the flags and launches.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
import warnings
import zipfile
from pathlib import Path

import gradio as gr
import torch

import lrm

try:  # ZeroGPU on Hugging Face Spaces; a no-op decorator everywhere else
    import spaces

    gpu = spaces.GPU
except ImportError:
    def gpu(fn=None, **_):
        return fn if fn is not None else (lambda f: f)

EXAMPLES_DIR = Path(__file__).parent / "examples"
# Each app process keeps its temporary files below RUN_ROOT/<pid>: its sessions' outputs and (unless GRADIO_TEMP_DIR
# is set) Gradio's upload and output cache. They go when the process ends; a start removes those of dead processes.
RUN_ROOT = Path(tempfile.gettempdir()) / "openlrm-demo"
SESSION_ROOT = RUN_ROOT / str(os.getpid()) / "sessions"
SESSION_TTL_S = 2 * 3600
MAX_UPLOAD_MB = 20  # uploads above this are refused before they reach the disk's cache
TITLE = "OpenLRM: one image to a 3D object"
FILES = ("glb", "obj", "ply", "mp4")  # the download buttons


def image_upload(**kwargs) -> gr.Image:
    """A `gr.Image` that hands an upload to the handler as its file path, undecoded: `lrm.preprocess` then reads it
    and says what is wrong with a bad file (Gradio's own decoding would fail first, with its internal message).

    Its `preprocess` is replaced on the instance, not in a subclass: Gradio writes a .pyi stub beside the source file
    of every Component subclass when it is defined."""
    image = gr.Image(type="filepath", **kwargs)
    decode = image.preprocess

    def preprocess(payload):
        if payload is None:
            return None
        if payload.path:
            return payload.path
        try:  # a base64 data URL from an API client: Gradio writes it to a file
            return decode(payload)
        except Exception:
            raise gr.Error("The upload is not an image that can be read; use a PNG, JPEG or WebP file.",
                           title="Cannot do that") from None
    image.preprocess = preprocess
    return image


def local_label(path: str) -> str:
    """'local: <folder>' naming the checkpoint, not just its generic file or folder name ('model', 'model.pth')."""
    p = Path(path).expanduser().resolve()
    generic = {"model", "model.pth", "model.safetensors", "pytorch_model.bin"}
    return "local: " + "/".join([p.parent.name, p.name] if p.name in generic else [p.name])


def model_menu(models: list[str]) -> tuple[list[tuple[str, str]], dict[str, str], str, str]:
    """The model menu for the given extra checkpoints -> ((label, name) choices, name -> source as `lrm.load_model`
    takes it, the selected name, an offline banner or "").

    Names are what clients see and send: Hub ids, `lrm-demo-shapes`, and `local: <folder>` for local checkpoints (no
    server paths). Given models that cannot be loaded are left out, with a line on stderr; released models that cannot
    be obtained now say so. The first given model is selected, else the reference demo's model, else the demo model.
    """
    sources: dict[str, str] = {}
    for m in map(str, models):
        if not lrm.is_available(m):
            print(f"--model {m}: not a local checkpoint, and no Hub model that can be obtained now; left out of the "
                  "menu", file=sys.stderr)
            continue
        name = local_label(m) if Path(m).expanduser().exists() else m
        while name in sources:
            name += "'"
        sources[name] = m
    if lrm.is_available(lrm.DEMO_MODEL) and lrm.DEMO_MODEL not in sources.values():
        sources[lrm.DEMO_MODEL] = lrm.DEMO_MODEL
    local = list(sources)
    online = lrm.is_available(lrm.DEFAULT_MODEL)
    for m in lrm.RELEASED_MODELS:
        sources.setdefault(m, m)
    labels = {name: name for name in sources}
    labels[lrm.DEMO_MODEL] = f"{lrm.DEMO_MODEL} (offline demo model, synthetic shapes)"
    for name in set(sources) - set(local):
        if not lrm.is_available(name):
            labels[name] = f"{name} (not available offline: runs {lrm.DEMO_MODEL})"
    given = [name for name in local if name != lrm.DEMO_MODEL]
    default = given[0] if given else lrm.DEFAULT_MODEL if online or not local else local[0]
    banner = ""
    if not online:
        banner = ("**Offline:** the Hugging Face Hub cannot be reached, so released OpenLRM models that are not "
                  f"already downloaded cannot be used. Running **{labels[default]}**; available here: "
                  f"{', '.join(labels[name] for name in local)}.")
    return [(labels[name], name) for name in sources], sources, default, banner


class ModelCache:
    """Keeps one model in memory; switching models frees the previous one first. A Hub model that cannot be
    obtained now is replaced by the embedded demo model at once; `note` then says so."""

    def __init__(self, device: str):
        self.device, self.source, self.model, self.note = device, None, None, None
        self._lock = threading.Lock()

    def get(self, source: str) -> lrm.LRM:
        with self._lock:
            if source != self.source:
                self.model, self.source, self.note = None, None, None
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.model, self.note = lrm.load_model_or_demo(source, device=self.device)
                self.source = source
            return self.model


class JobCancelled(Exception):
    """The browser session of a running job has ended."""


class Sessions:
    """Each browser session writes below its own folder, removed when the session ends (after its running job has
    stopped) or after `ttl` seconds; a job of an ended session stops at its next progress report."""

    def __init__(self, root: Path = SESSION_ROOT, ttl: float = SESSION_TTL_S):
        self.root, self.ttl = Path(root), ttl
        self.ended: set[str] = set()
        self.cancelled: list[str] = []  # the runs stopped because their session ended (a log)
        self._busy: dict[str, int] = {}
        self._lock = threading.Lock()

    def _key(self, request: gr.Request | None) -> str:
        return re.sub(r"[^A-Za-z0-9_-]", "_", getattr(request, "session_hash", None) or "shared")

    def new_run(self, request: gr.Request | None) -> Path:
        self.sweep()
        run = self.root / self._key(request) / f"{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:8]}"
        run.mkdir(parents=True)
        return run

    @contextlib.contextmanager
    def job(self, request: gr.Request | None):
        """Marks the session busy while its job runs, so that its folder outlives the job."""
        key = self._key(request)
        with self._lock:
            self._busy[key] = self._busy.get(key, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._busy[key] -= 1
                done = self._busy[key] == 0 and key in self.ended
            if done:
                shutil.rmtree(self.root / key, ignore_errors=True)

    def check(self, request: gr.Request | None) -> None:
        if self._key(request) in self.ended:
            raise JobCancelled

    def close(self, request: gr.Request | None) -> None:
        key = self._key(request)
        with self._lock:
            self.ended.add(key)
            busy = self._busy.get(key, 0) > 0
        if not busy:  # else the job removes it when it stops
            shutil.rmtree(self.root / key, ignore_errors=True)

    def sweep(self) -> None:
        if not self.root.is_dir():
            return
        for folder in self.root.iterdir():
            try:
                if time.time() - folder.stat().st_mtime > self.ttl and not self._busy.get(folder.name):
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                pass


def user_error(err: Exception) -> gr.Error:
    return gr.Error(str(err), title="Cannot do that")


def output_name(image: str) -> str:
    """The downloads' name: the picture's, without the `_input` that /preprocess adds ('cone_input.png' -> 'cone')."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(image).stem).strip("._")[:64].removesuffix("_input")
    return stem or "object"


def download_files(result: lrm.Reconstruction) -> list[str | None]:
    """The files of the download buttons (`FILES`; None where not made). A textured OBJ comes as a zip with its MTL
    and texture PNG (a lone .obj would lose its texture)."""
    files = dict(result.files)
    if "mtl" in files and "obj" in files:
        bundle = files["obj"].with_name(f"{files['obj'].stem}_obj.zip")
        if not bundle.exists():
            with zipfile.ZipFile(bundle, "w") as z:
                for key in ("obj", "mtl", "texture"):
                    z.write(files[key], files[key].name)
        files["obj"] = bundle
    return [str(files[k]) if k in files else None for k in FILES]


def shown_if_set(value):
    """A download button shows when it has a file."""
    return gr.DownloadButton(visible=value is not None)


def shown_with_viewer(value, shown):
    """A download button's file, also shown in its viewer (Model3D, Video), unless the viewer shows it already.

    The viewers take their file from the button rather than from the generator, and never twice: the button's change
    event fires for the generator's last yield and again for its completion, and a second value reaching `gr.Model3D`
    while its 3-D renderer is still loading cancels that loading, leaving the panel empty (Gradio 6.31's Model3D)."""
    same = value is not None and shown is not None and Path(value).name == Path(shown).name and (
        Path(value).read_bytes() == Path(shown).read_bytes())
    return gr.DownloadButton(visible=value is not None), gr.skip() if same else value


class Handlers:
    """The app's event handlers, with what they share: the loaded model, the session folders, the defaults."""

    def __init__(self, device: str, defaults: lrm.JobOptions, sessions: Sessions, menu: dict[str, str],
                 default_model: str):
        self.device, self.defaults, self.sessions = device, defaults, sessions
        self.menu = menu  # menu name -> source (local path or Hub id)
        self.default_model = default_model
        self.cache = ModelCache(device)

    def check_input(self, image):
        if image is None:
            raise gr.Error("Please upload an image first.", title="No image")

    def preprocess(self, image: str, remove_background: bool, foreground_ratio: float, request: gr.Request):
        """Step 1 of 2: cut the object out of a picture and centre it. Pass the result to /generate.

        Args:
            image: the picture (PNG, JPEG, WebP, ...; one object).
            remove_background: remove the background (skipped when the picture already has transparency).
            foreground_ratio: the object's size after centring, as a fraction of the square picture's side.
        Returns:
            the preprocessed picture: a 512 px PNG with a transparent background.
        """
        self.check_input(image)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = lrm.preprocess(image, remove_background=remove_background, foreground_ratio=foreground_ratio)
            except ValueError as err:
                raise user_error(err) from None
        for w in caught:
            if issubclass(w.category, RuntimeWarning):
                gr.Warning(str(w.message))
        # in a folder of this run: another session's picture of the same name never overwrites it
        path = self.sessions.new_run(request) / f"{output_name(image)}_input.png"
        result.save(path)
        return str(path)

    def runs(self, name: str) -> str:
        """The model that runs for a menu entry: the demo model for a Hub model that cannot be obtained now."""
        source = self.menu.get(name, name)
        return source if lrm.is_available(source) else lrm.DEMO_MODEL

    @staticmethod
    def settings_of(source: str) -> lrm.InferDefaults:
        """The settings that go with a model (frame size, mesh resolution, ...), without loading it when possible."""
        try:
            return lrm.model_defaults(source)
        except (ValueError, FileNotFoundError):
            return lrm.InferDefaults()

    def on_model_change(self, source):
        own = self.settings_of(self.runs(source))
        return gr.Slider(value=own.render_size), gr.Slider(value=own.mesh_size), gr.Slider(value=own.foreground_ratio)

    @gpu(duration=120)
    def generate(self, image: str, model: str, source_distance: float, mesh_resolution: int, threshold: float,
                 video: bool, views: int, fps: int, frame_size: int, faces: int = lrm.JobOptions.faces,
                 texture_size: int = lrm.JobOptions.texture_size, keep_floaters: bool = False,
                 request: gr.Request = None, progress=gr.Progress()):
        """Step 2 of 2: the 3D object from a picture that /preprocess made (call /preprocess first).

        Args:
            image: the picture returned by /preprocess.
            model: a model of the menu: a Hugging Face id, lrm-demo-shapes, or "local: <folder>" for a
                checkpoint given to the app.
            source_distance: the input camera's distance from the object.
            mesh_resolution: the marching-cubes grid.
            threshold: the density level of the surface.
            video: also render the orbit video.
            views: the video's frames.
            fps: the video's frame rate.
            frame_size: the video's frame size in pixels.
            faces: the GLB / OBJ asset's triangles after decimation (0: every marching-cubes triangle).
            texture_size: the side of its baked texture (0: vertex colours).
            keep_floaters: keep small disconnected pieces.
        Returns:
            the GLB (light, textured), OBJ (with a texture: a zip of the OBJ, its MTL and PNG) and PLY (OpenLRM's dense
            mesh) meshes and the MP4 orbit video (None where not made), and a summary.
        """
        self.check_input(image)
        if model not in self.menu:
            raise gr.Error(f"Unknown model {model!r}: choose one of the menu.", title="Cannot do that")
        progress(0.0, desc="Loading the model")
        try:
            loaded = self.cache.get(self.menu[model])
            options = lrm.JobOptions(source_distance=source_distance, mesh_resolution=int(mesh_resolution),
                                     threshold=threshold, video=bool(video), n_views=int(views), fps=int(fps),
                                     video_size=int(frame_size) // 2 * 2, faces=int(faces),
                                     texture_size=int(texture_size), keep_floaters=bool(keep_floaters),
                                     remove_background=False)  # a stand-in model recentres it at its own size
        except (ValueError, FileNotFoundError) as err:
            raise user_error(err) from None
        if self.cache.note:
            gr.Warning(self.cache.note, title="Using the offline demo model")

        def report(stage, fraction):
            self.sessions.check(request)  # stop when the browser tab has gone
            if stage == "video":
                progress((round(fraction * options.n_views), options.n_views), desc="Rendering the video",
                         unit="frames")
            else:
                progress(fraction, desc={"planes": "Encoding the image", "mesh": "Extracting the mesh",
                                         "asset": "Decimating, unwrapping, baking the texture"}.get(stage))

        yield None, None, None, None, "Working…"  # a new run clears the last one's results
        try:
            with self.sessions.job(request):
                out = self.sessions.new_run(request)
                for stage, result in lrm.reconstruct_steps(loaded, image, out, options, name=output_name(image),
                                                           preprocessed=not self.cache.note, progress=report):
                    files = download_files(result)
                    if stage == "asset" and options.video:  # the mesh, to turn around while the video renders
                        yield *files, "Mesh ready; rendering the video…"
        except JobCancelled:
            self.sessions.cancelled.append(out.name)
            return
        except ValueError as err:
            raise user_error(err) from None
        except (torch.cuda.OutOfMemoryError, MemoryError):
            raise gr.Error("Out of memory: lower the mesh resolution or the frame size, or use a smaller model.",
                           title="Out of memory") from None
        for problem in result.problems:
            gr.Warning(problem, title="Not everything could be made")
        yield *files, self.summary(result, model)

    def summary(self, result: lrm.Reconstruction, model: str) -> str:
        stages = " · ".join(f"{k} {v:.2f} s" for k, v in result.timings.items() if k != "preprocess")
        total = sum(v for k, v in result.timings.items() if k != "preprocess")
        sizes = ", ".join(f"{k.upper()} {result.files[k].stat().st_size / 1e6:.1f} MB" for k in ("glb", "obj", "ply")
                          if k in result.files)
        mesh = f"; mesh {len(result.asset.faces):,} triangles ({sizes})" if result.asset is not None else ""
        who = (f"`{lrm.DEMO_MODEL}` (the offline demo model: `{model}` is not available here)" if self.cache.note
               else f"`{model}`")
        problems = "".join(f"\n\n**Not made:** {p}" for p in result.problems)
        return f"**Done** in {total:.2f} s ({stages}) with {who} on {self.device}{mesh}.{problems}"

    def example(self, image, request: gr.Request, progress=gr.Progress()):
        """An example through both steps with the default model at the default settings."""
        job = self.defaults.for_model(self.settings_of(self.runs(self.default_model)))
        pre = self.preprocess(image, job.remove_background, job.foreground_ratio, request)
        *_, last = self.generate(pre, self.default_model, job.source_distance, job.mesh_resolution, job.threshold,
                                 job.video, job.n_views, job.fps, job.video_size, job.faces, job.texture_size,
                                 job.keep_floaters, request, progress)
        return (pre, *last)


def build_demo(models: list[str] | None = None, device: str | None = None, *, defaults: lrm.JobOptions | None = None,
               cache_examples: bool = True, sessions: Sessions | None = None) -> gr.Blocks:
    """The demo's Blocks (not launched).

    Args:
        models: extra checkpoints (local folders/files or Hub ids) offered first in the model menu; the first
            loadable one is selected, else the reference demo's model.
        device: "cpu" or "cuda" (default: cuda when available).
        defaults: initial control values (unset ones follow the selected model).
        cache_examples: cache example outputs on first use (lazily).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    choices, menu, default, banner = model_menu(models or [])
    h = Handlers(device, defaults or lrm.JobOptions(), sessions or Sessions(), menu, default)
    d = h.defaults.for_model(h.settings_of(h.runs(default)))  # the controls' first values
    why = lrm.default_remover().check()  # once, at start-up: is rembg's model here?
    if why:
        banner += (f"\n\n**Background removal:** rembg cannot be used ({why}), so GrabCut cuts the objects out; "
                   "pictures with a transparent background are used as they are.")
    with gr.Blocks(title=TITLE, delete_cache=(900, SESSION_TTL_S)) as demo:
        gr.Markdown(f"# {TITLE}\nUpload or drop a picture of one object. You get the cut-out input, a coloured "
                    "mesh you can turn around, and an orbit video. Weights: OpenLRM, "
                    "[CC BY-NC 4.0](https://creativecommons.org/licenses/by-nc/4.0/) (non-commercial).")
        gr.Markdown(banner.strip(), visible=bool(banner), elem_id="banner")
        with gr.Row(equal_height=True):
            inp = image_upload(label="Input image", format="png", elem_id="inp", height=320,
                               sources=["upload", "clipboard", "webcam"])
            pre = image_upload(label="Preprocessed", format="png", interactive=False, elem_id="pre", height=320)
            m3d = gr.Model3D(label="Mesh (drag to rotate)", clear_color=(0.93, 0.93, 0.95, 1.0), elem_id="m3d",
                             height=320)
            vid = gr.Video(label="Orbit video", autoplay=True, loop=True, interactive=False, elem_id="vid",
                           height=320)
        with gr.Row():
            btn = gr.Button("Generate", variant="primary", elem_id="go", scale=2)
            downloads = [gr.DownloadButton(fmt.upper(), visible=False, elem_id=f"dl-{fmt}") for fmt in FILES]
        summary = gr.Markdown(elem_id="timings", label="Summary")
        with gr.Accordion("Settings", open=False):
            with gr.Row():
                model = gr.Dropdown(choices, value=default, label="Model", elem_id="model", scale=2)
                remove_bg = gr.Checkbox(d.remove_background, label="Remove background")
                ratio = gr.Slider(0.5, 1.0, d.foreground_ratio, step=0.05, label="Foreground ratio")
                distance = gr.Slider(1.0, 3.5, d.source_distance, step=0.1, label="Source camera distance")
            with gr.Row():
                mesh_res = gr.Slider(32, 512, d.mesh_resolution, step=32, label="Mesh resolution")
                threshold = gr.Slider(0.5, 20.0, d.threshold, step=0.5, label="Density threshold")
                video_on = gr.Checkbox(d.video, label="Render video")
                views = gr.Slider(8, 200, d.n_views, step=1, label="Video views")
                fps = gr.Slider(5, 60, d.fps, step=1, label="FPS")
                frame = gr.Slider(64, 512, d.video_size, step=16, label="Frame size")
            with gr.Row():
                faces = gr.Slider(0, 200_000, d.faces, step=1000, label="Triangles of the GLB / OBJ (0: all)")
                texture = gr.Dropdown([("vertex colours", 0), ("512²", 512), ("1024²", 1024), ("2048²", 2048),
                                       ("4096²", 4096)], value=d.texture_size, label="Texture")
                floaters = gr.Checkbox(d.keep_floaters, label="Keep small pieces (floaters)")
        outputs = [*downloads, summary]

        # Checking and preprocessing do not wait behind other users' generation jobs (their own concurrency);
        # `generate` is limited by the queue's default (one job at a time: one GPU). Its progress shows on the video
        # panel only, so the mesh can be turned while the video renders.
        run = btn.click(h.check_input, [inp], None, concurrency_limit=None, api_visibility="private")
        run = run.success(h.preprocess, [inp, remove_bg, ratio], [pre], api_name="preprocess",
                          concurrency_limit=2, concurrency_id="preprocess")
        run.success(h.generate, [pre, model, distance, mesh_res, threshold, video_on, views, fps, frame, faces, texture,
                                 floaters], outputs,
                    api_name="generate", show_progress_on=[vid])
        for button, viewer in zip(downloads, [m3d, None, None, vid]):
            if viewer:
                button.change(shown_with_viewer, [button, viewer], [button, viewer], api_visibility="private",
                              queue=False, show_progress="hidden")
            else:
                button.change(shown_if_set, [button], [button], api_visibility="private", queue=False,
                              show_progress="hidden")
        model.change(h.on_model_change, [model], [frame, mesh_res, ratio], api_visibility="private")
        examples = sorted(EXAMPLES_DIR.glob("*.png"))
        if examples:
            gr.Examples([[str(p)] for p in examples], inputs=[inp], outputs=[pre] + outputs, fn=h.example,
                        cache_examples=cache_examples, cache_mode="lazy", examples_per_page=12,
                        label="Examples (procedural objects made by this project; click one to see its result)")
        demo.unload(h.sessions.close)
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", default=[],
                   help="a local checkpoint folder/file or Hub id to offer first (repeatable)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="[default: cuda if available]")
    p.add_argument("--host", default=None, help="address to bind [default: 127.0.0.1, or $GRADIO_SERVER_NAME]")
    p.add_argument("--port", type=int, default=None, help="[default: first free port from 7860]")
    p.add_argument("--share", action="store_true", help="also create a public gradio.live link")
    p.add_argument("--auth", default=None, metavar="USER:PASS", help="require this login")
    p.add_argument("--queue-size", type=int, default=20, help="waiting jobs before new ones are refused")
    p.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB,
                   help=f"refuse larger uploads [default: {MAX_UPLOAD_MB}]")
    p.add_argument("--offline", action="store_true", help="never contact the Hugging Face Hub")
    return p.parse_args(argv)


def sweep_dead_runs(root: Path = RUN_ROOT) -> None:
    """Remove the temporary files of app processes that are gone (killed without cleaning up)."""
    for folder in root.glob("*"):
        if folder.name.isdigit() and int(folder.name) != os.getpid():
            try:
                os.kill(int(folder.name), 0)
            except ProcessLookupError:
                shutil.rmtree(folder, ignore_errors=True)
            except PermissionError:
                pass  # alive, another user's


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.offline:
        import huggingface_hub.constants as hf_constants
        os.environ["HF_HUB_OFFLINE"] = "1"
        hf_constants.HF_HUB_OFFLINE = True
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but no CUDA device is available; use --device cpu")
    auth = None
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep or not user:
            raise SystemExit("--auth must be USER:PASS")
        auth = (user, password)
    sweep_dead_runs()
    run_root = SESSION_ROOT.parent
    os.environ.setdefault("GRADIO_TEMP_DIR", str(run_root / "gradio"))  # read by Gradio when it stores a file

    def stop(signum, _frame):  # SIGTERM ends the server like Ctrl-C, so the cleanup below runs
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    try:
        demo = build_demo(args.model, args.device)
        demo.queue(default_concurrency_limit=1, max_size=args.queue_size)
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, auth=auth, show_error=True,
                    max_file_size=f"{args.max_upload_mb}mb")
    except KeyboardInterrupt:
        pass
    finally:
        shutil.rmtree(run_root, ignore_errors=True)


if __name__ == "__main__":
    main()
