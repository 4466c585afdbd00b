"""Gradio demo: drag an image in, get the preprocessed image, an interactive mesh and an orbit video side by side.

    python app.py [--model ID_OR_PATH ...] [--device cpu|cuda] [--host H] [--port P] [--share] [--auth user:pass]
                  [--queue-size N] [--offline]

`build_demo()` returns the `gr.Blocks` without launching it; `main()` parses the flags and launches.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
import warnings
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
SESSION_ROOT = Path(tempfile.gettempdir()) / "openlrm-demo-sessions"
SESSION_TTL_S = 2 * 3600
TITLE = "OpenLRM: one image to a 3D object"


def local_label(path: str) -> str:
    """'local: <folder>' naming the checkpoint, not just its generic file or folder name ('model', 'model.pth')."""
    p = Path(path).expanduser().resolve()
    generic = {"model", "model.pth", "model.safetensors", "pytorch_model.bin"}
    return "local: " + "/".join([p.parent.name, p.name] if p.name in generic else [p.name])


def model_menu(models: list[str]) -> tuple[list[tuple[str, str]], str, str]:
    """The model menu for the given extra checkpoints -> ((label, source) choices, the selected source, an offline
    banner or ""). The first given model that can be loaded is selected, else the reference demo's model, else (offline)
    the first local one."""
    local = [(local_label(m) if Path(m).expanduser().exists() else m, str(m)) for m in models]
    if lrm.is_available(lrm.DEMO_MODEL) and lrm.DEMO_MODEL not in {s for _, s in local}:
        local.append((f"{lrm.DEMO_MODEL} (offline demo model, synthetic shapes)", lrm.DEMO_MODEL))
    available = {s: lrm.is_available(s) for s in [s for _, s in local] + [lrm.DEFAULT_MODEL]}
    given = [s for _, s in local if s != lrm.DEMO_MODEL and available[s]]
    online = available[lrm.DEFAULT_MODEL]
    default = given[0] if given else lrm.DEFAULT_MODEL if online or not local else local[0][1]
    choices = local + [(m, m) for m in lrm.RELEASED_MODELS if m not in {s for _, s in local}]
    banner = ""
    if not online:
        labels = dict((s, label) for label, s in local)
        usable = [label for label, s in local if available[s]]
        banner = ("**Offline:** the Hugging Face Hub cannot be reached, so released OpenLRM models that are not "
                  "already downloaded cannot be used. " +
                  (f"Running **{labels.get(default, default)}**; available here: {', '.join(usable)}." if usable else
                   "No local model was given: start with `python app.py --model PATH/TO/CHECKPOINT`."))
    return choices, default, banner


class ModelCache:
    """Keeps one model in memory; switching models frees the previous one first.

    A Hub model that cannot be obtained (offline, not cached) is replaced by the embedded demo model; `note` then
    says so.
    """

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


class Sessions:
    """Each browser session writes below its own folder; removed on unload or after `ttl` seconds."""

    def __init__(self, root: Path = SESSION_ROOT, ttl: float = SESSION_TTL_S):
        self.root, self.ttl = Path(root), ttl

    def _folder(self, request: gr.Request | None) -> Path:
        key = getattr(request, "session_hash", None) or "shared"
        return self.root / re.sub(r"[^A-Za-z0-9_-]", "_", key)

    def new_run(self, request: gr.Request | None) -> Path:
        self.sweep()
        run = self._folder(request) / f"{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:8]}"
        run.mkdir(parents=True)
        return run

    def close(self, request: gr.Request | None) -> None:
        shutil.rmtree(self._folder(request), ignore_errors=True)

    def sweep(self) -> None:
        if not self.root.is_dir():
            return
        for folder in self.root.iterdir():
            try:
                if time.time() - folder.stat().st_mtime > self.ttl:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                pass


def user_error(err: Exception) -> gr.Error:
    return gr.Error(str(err), title="Cannot do that")


class Handlers:
    """The app's event handlers, with what they share: the loaded model, the session folders, the defaults."""

    def __init__(self, device: str, defaults: lrm.JobOptions, sessions: Sessions, labels: dict[str, str],
                 default_model: str):
        self.device, self.defaults, self.sessions, self.labels = device, defaults, sessions, labels
        self.default_model = default_model
        self.cache = ModelCache(device)

    def check_input(self, image):
        """Refuse to start without an image."""
        if image is None:
            raise gr.Error("Please upload an image first.", title="No image")

    def preprocess_image(self, image, remove_background, foreground_ratio, request: gr.Request):
        """Background removal and recentring; shown at once.

        Returned as a uniquely named file of the session: Gradio caches outputs by content, and a shared PIL output
        name ("image.png") would be rewritten while another session with the same picture downloads it."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = lrm.preprocess(image, remove_background=remove_background,
                                        foreground_ratio=foreground_ratio)
            except ValueError as err:
                raise user_error(err) from None
        for w in caught:
            if issubclass(w.category, RuntimeWarning):
                gr.Warning(str(w.message))
        run = self.sessions.new_run(request)
        path = run / f"preprocessed-{run.name}.png"
        result.save(path)
        return str(path)

    @staticmethod
    def settings_of(source: str) -> lrm.InferDefaults:
        """The settings that go with a model (frame size, mesh resolution, ...), without loading it when possible."""
        try:
            return lrm.model_defaults(source)
        except (ValueError, FileNotFoundError):
            return lrm.InferDefaults()

    def on_model_change(self, source):
        own = self.settings_of(source)
        return gr.Slider(value=own.render_size), gr.Slider(value=own.mesh_size), gr.Slider(value=own.foreground_ratio)

    @gpu(duration=120)
    def generate(self, pre_image, model_source, source_distance, mesh_resolution, threshold, video, views, fps,
                 frame_size, request: gr.Request, progress=gr.Progress()):
        """Planes, mesh and video from the preprocessed image."""
        if pre_image is None:
            raise gr.Error("Please upload an image first.", title="No image")
        progress(0.0, desc="Loading model")
        try:
            model = self.cache.get(model_source)
            options = lrm.JobOptions(source_distance=source_distance, mesh_resolution=int(mesh_resolution),
                                     threshold=threshold, video=bool(video), n_views=int(views), fps=int(fps),
                                     video_size=int(frame_size) // 2 * 2,
                                     # a fallback model recentres the picture at its own size
                                     remove_background=False)
        except (ValueError, FileNotFoundError) as err:
            raise user_error(err) from None
        if self.cache.note:
            gr.Warning(self.cache.note, title="Using the offline demo model")
        out = self.sessions.new_run(request)
        weights = {"planes": (0.0, 0.1), "mesh": (0.1, 0.5 if options.video else 1.0), "video": (0.5, 1.0)}

        def report(stage, fraction):
            lo, hi = weights.get(stage, (0.0, 0.0))
            if stage == "video":
                desc = f"Rendering video frame {round(fraction * options.n_views)}/{options.n_views}"
            else:
                desc = {"planes": "Encoding image", "mesh": "Extracting mesh"}.get(stage, stage)
            progress(lo + (hi - lo) * fraction, desc=desc)

        hidden = gr.DownloadButton(value=None, visible=False)
        try:
            steps = lrm.reconstruct_steps(model, pre_image, out, options, name=f"openlrm-{out.name}",
                                          preprocessed=not self.cache.note, progress=report)
            for stage, result in steps:
                files = result.files
                buttons = [gr.DownloadButton(value=str(files[k]), visible=True) if k in files else hidden
                           for k in ("glb", "obj", "ply", "mp4")]
                if stage == "mesh" and options.video:  # show the mesh while the video renders
                    yield (str(files["glb"]), None, *buttons, "Mesh ready; rendering the video…")
        except ValueError as err:
            raise user_error(err) from None
        except (torch.cuda.OutOfMemoryError, MemoryError):
            raise gr.Error("Out of memory: lower the mesh resolution or the frame size, or use a smaller model.",
                           title="Out of memory") from None
        stages = " · ".join(f"{k} {v:.2f} s" for k, v in result.timings.items() if k != "preprocess")
        total = sum(v for k, v in result.timings.items() if k != "preprocess")
        mesh_info = f"; mesh {len(result.mesh.vertices):,} vertices" if result.mesh is not None else ""
        name = self.labels.get(model_source, model_source)
        who = (f"`{lrm.DEMO_MODEL}` (the offline demo model: `{name}` is not available here)" if self.cache.note
               else f"`{name}`")
        summary = f"**Done** in {total:.2f} s ({stages}) with {who} on {self.device}{mesh_info}."
        yield (str(files["glb"]) if "glb" in files else None, str(files["mp4"]) if "mp4" in files else None,
               *buttons, summary)

    def example(self, image, request: gr.Request, progress=gr.Progress()):
        """An example through both steps with the default model at the default settings."""
        job = self.defaults.for_model(self.settings_of(self.default_model))
        pre_image = self.preprocess_image(image, job.remove_background, job.foreground_ratio, request)
        *_, last = self.generate(pre_image, self.default_model, job.source_distance, job.mesh_resolution,
                                 job.threshold, job.video, job.n_views, job.fps, job.video_size, request, progress)
        return (pre_image, *last)


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
    choices, default, banner = model_menu(models or [])
    h = Handlers(device, defaults or lrm.JobOptions(), sessions or Sessions(),
                 {source: label for label, source in choices}, default)
    d = h.defaults.for_model(h.settings_of(default))  # the controls' first values
    with gr.Blocks(title=TITLE, delete_cache=(900, SESSION_TTL_S)) as demo:
        gr.Markdown(f"# {TITLE}\nUpload or drop a picture of one object. You get the cut-out input, a coloured "
                    "mesh you can turn around, and an orbit video. Weights: OpenLRM, "
                    "[CC BY-NC 4.0](https://creativecommons.org/licenses/by-nc/4.0/) (non-commercial).")
        gr.Markdown(banner, visible=bool(banner), elem_id="banner")
        with gr.Row(equal_height=True):
            inp = gr.Image(label="Input image", type="pil", image_mode="RGBA", format="png",
                           sources=["upload", "clipboard", "webcam"], elem_id="inp", height=320)
            pre = gr.Image(label="Preprocessed", type="pil", image_mode="RGBA", format="png", interactive=False,
                           elem_id="pre", height=320)
            m3d = gr.Model3D(label="Mesh (drag to rotate)", clear_color=(0.93, 0.93, 0.95, 1.0), elem_id="m3d",
                             height=320)
            vid = gr.Video(label="Orbit video", autoplay=True, loop=True, interactive=False, elem_id="vid",
                           height=320)
        with gr.Row():
            btn = gr.Button("Generate", variant="primary", elem_id="go", scale=2)
            downloads = [gr.DownloadButton(fmt.upper(), visible=False, elem_id=f"dl-{fmt}")
                         for fmt in ("glb", "obj", "ply", "mp4")]
        timings = gr.Markdown(elem_id="timings")
        with gr.Accordion("Settings", open=False):
            with gr.Row():
                model = gr.Dropdown(choices, value=default, label="Model", allow_custom_value=True, elem_id="model",
                                    scale=2)
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
        outputs = [m3d, vid, *downloads, timings]

        # Checking and preprocessing do not wait behind other users' generation jobs (their own concurrency);
        # `generate` is limited by the queue's default (one job at a time: one GPU).
        run = btn.click(h.check_input, [inp], None, concurrency_limit=None, api_visibility="private")
        run = run.success(h.preprocess_image, [inp, remove_bg, ratio], [pre], api_name="preprocess",
                          concurrency_limit=2, concurrency_id="preprocess")
        run.success(h.generate, [pre, model, distance, mesh_res, threshold, video_on, views, fps, frame], outputs,
                    api_name="generate")
        model.change(h.on_model_change, [model], [frame, mesh_res, ratio], api_visibility="private")
        examples = sorted(EXAMPLES_DIR.glob("*.png"))
        if examples:
            gr.Examples([[str(p)] for p in examples], inputs=[inp], outputs=[pre] + outputs,
                        fn=h.example, cache_examples=cache_examples, cache_mode="lazy", examples_per_page=12,
                        label="Examples (procedural objects made by this project)")
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
    p.add_argument("--offline", action="store_true", help="never contact the Hugging Face Hub")
    return p.parse_args(argv)


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
    demo = build_demo(args.model, args.device)
    demo.queue(default_concurrency_limit=1, max_size=args.queue_size)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, auth=auth, show_error=True)


if __name__ == "__main__":
    main()
