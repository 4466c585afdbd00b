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
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import torch

import lrm
from lrm.config import InferDefaults, LRMConfig, infer_defaults_for
from lrm.hub import DEMO_MODEL, DEMO_MODEL_DIR, RELEASED_MODELS, V10_MODELS
from lrm.pipeline import reconstruct_steps
from lrm.preprocess import ImageError, load_image, recenter

try:  # ZeroGPU on Hugging Face Spaces; a no-op decorator everywhere else
    import spaces

    gpu = spaces.GPU
except ImportError:
    def gpu(fn=None, **_):
        return fn if fn is not None else (lambda f: f)

DEFAULT_MODEL = "zxhezexin/openlrm-mix-base-1.1"  # the reference demo's choice
EXAMPLES_DIR = Path(__file__).parent / "examples"
SESSION_ROOT = Path(tempfile.gettempdir()) / "openlrm-demo-sessions"
SESSION_TTL_S = 2 * 3600
TITLE = "OpenLRM: one image to a 3D object"


# ----------------------------------------------------------------------------------------------------------------
# Models


@dataclass(frozen=True)
class Choice:
    label: str
    source: str  # repo id or local path, as `lrm.load_model` takes it


def released_render_size(repo_id: str) -> int | None:
    """Render size of a released model from its name (OpenLRM infer configs / model cards), without loading it."""
    size = next((s for s in ("small", "base", "large") if f"-{s}-" in repo_id), None)
    if size is None:
        return 192 if "lrm-base" in repo_id else 384 if "lrm-large" in repo_id else None
    if repo_id in V10_MODELS:
        return {"small": 192, "base": 192, "large": 384}[size]
    return {"small": 192, "base": 288, "large": 384}[size]


def local_defaults(path: Path):
    """Inference defaults of a local v1.1 checkpoint from its config.json / infer.json (cheap, no weights read);
    None when they are not there (v1.0 keeps them inside model.pth)."""
    import json
    folder = path if path.is_dir() else path.parent
    try:
        config = LRMConfig.from_dict(json.loads((folder / "config.json").read_text()))
        infer = json.loads((folder / "infer.json").read_text()) if (folder / "infer.json").is_file() else None
        return infer_defaults_for(config, infer)
    except (OSError, ValueError):
        return None


def local_label(path: str) -> str:
    """'local: <folder>' naming the checkpoint, not just its generic file or folder name ('model', 'model.pth')."""
    p = Path(path).expanduser().resolve()
    generic = {"model", "model.pth", "model.safetensors", "pytorch_model.bin"}
    parts = [p.parent.name, p.name] if p.name in generic else [p.name]
    return "local: " + "/".join(parts)


def hub_is_offline() -> bool:
    import huggingface_hub.constants as hf_constants
    return bool(hf_constants.HF_HUB_OFFLINE)


def is_available(source: str) -> bool:
    """Can `source` be loaded now: a local path, or a Hub model already in the cache, or the Hub is reachable."""
    if source == DEMO_MODEL:
        return DEMO_MODEL_DIR.is_dir()
    if Path(source).expanduser().exists():
        return True
    from huggingface_hub import try_to_load_from_cache
    repo, filename = source, "model.safetensors"
    if source in lrm.hub.FIRST_RELEASE_MODELS:
        repo, filename = lrm.hub.FIRST_RELEASE_REPO, f"{source}.pth"
    elif source in V10_MODELS:
        filename = "model.pth"
    if isinstance(try_to_load_from_cache(repo, filename), str):
        return True
    return not hub_is_offline() and hub_reachable()


_HUB_REACHABLE: bool | None = None


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick check per process that huggingface.co answers."""
    global _HUB_REACHABLE
    if _HUB_REACHABLE is None:
        import urllib.request
        try:
            urllib.request.urlopen("https://huggingface.co/api/models?limit=1", timeout=timeout).close()
            _HUB_REACHABLE = True
        except OSError:
            _HUB_REACHABLE = False
    return _HUB_REACHABLE


class ModelCache:
    """Keeps one model in memory; switching models frees the previous one first.

    A Hub model that cannot be obtained (offline, not cached) is replaced by the embedded demo model; `note` then
    says so.
    """

    def __init__(self, device: str):
        self.device = device
        self.source: str | None = None
        self.model: lrm.LRM | None = None
        self.note: str | None = None
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


# ----------------------------------------------------------------------------------------------------------------
# Per-session output folders


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
        now = time.time()
        for folder in self.root.iterdir():
            try:
                if now - folder.stat().st_mtime > self.ttl:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                pass


# ----------------------------------------------------------------------------------------------------------------
# The app


@dataclass
class Defaults:
    """Reference Gradio settings (OpenLRM configs/infer-gradio.yaml); the frame size and, unless set here, the mesh
    resolution (384 for the released ones) and the foreground ratio (0.85 for the released ones) follow the chosen
    model."""
    remove_background: bool = True
    foreground_ratio: float | None = None  # None: the chosen model's (0.85 for the released ones)
    source_distance: float = 2.0
    mesh_resolution: int | None = None
    threshold: float = 3.0
    video: bool = True
    views: int = 100
    fps: int = 25


def _user_error(err: Exception) -> gr.Error:
    return gr.Error(str(err), title="Cannot do that")


def build_demo(models: list[str] | None = None, device: str | None = None, *, defaults: Defaults | None = None,
               cache_examples: bool = True, sessions: Sessions | None = None) -> gr.Blocks:
    """The demo's Blocks (not launched).

    Args:
        models: extra checkpoints (local folders/files or Hub ids) offered first in the model menu; the first
            loadable one is selected, else the reference demo's model.
        device: "cpu" or "cuda" (default: cuda when available).
        defaults: initial control values.
        cache_examples: cache example outputs on first use (lazily).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    defaults = defaults or Defaults()
    sessions = sessions or Sessions()
    cache = ModelCache(device)

    local = [Choice(local_label(m), str(m)) if Path(m).expanduser().exists() else Choice(m, m) for m in models or []]
    if DEMO_MODEL_DIR.is_dir() and DEMO_MODEL not in {c.source for c in local}:
        local.append(Choice(f"{DEMO_MODEL} (offline demo model, synthetic shapes)", DEMO_MODEL))
    released = [Choice(m, m) for m in RELEASED_MODELS if m not in {c.source for c in local}]
    choices = local + released
    available = {c.source: is_available(c.source) for c in local + [Choice(DEFAULT_MODEL, DEFAULT_MODEL)]}
    given = [c.source for c in local if c.source != DEMO_MODEL and available[c.source]]
    if given:
        default = given[0]
    elif available[DEFAULT_MODEL] or not local:
        default = DEFAULT_MODEL
    else:
        default = local[0].source
    banner = ""
    if not available[DEFAULT_MODEL]:
        labels = {c.source: c.label for c in local}
        usable = [c.label for c in local if available[c.source]]
        banner = ("**Offline:** the Hugging Face Hub cannot be reached, so released OpenLRM models that are not "
                  "already downloaded cannot be used. " +
                  (f"Running **{labels.get(default, default)}**; available here: {', '.join(usable)}." if usable else
                   "No local model was given: start with `python app.py --model PATH/TO/CHECKPOINT`."))

    def settings_of(source: str) -> tuple[int, int, float]:
        """(frame size, mesh resolution, foreground ratio) that go with a model, without loading it when possible."""
        path = DEMO_MODEL_DIR if source == DEMO_MODEL else Path(source).expanduser()
        found = local_defaults(path) if path.exists() else None
        if found is None and not path.exists() and released_render_size(source):
            return released_render_size(source), 384, InferDefaults.foreground_ratio
        if found is None:
            try:
                found = cache.get(source).infer_defaults
            except (ValueError, FileNotFoundError):
                return 192, 384, InferDefaults.foreground_ratio
        return found.render_size, found.mesh_size, found.foreground_ratio

    # ---- handlers -------------------------------------------------------------------------------------------

    def check_input(image):
        """Refuse to start without an image."""
        if image is None:
            raise gr.Error("Please upload an image first.", title="No image")

    def preprocess_image(image, remove_background, foreground_ratio, request: gr.Request):
        """Background removal and recentring; shown at once.

        Returned as a uniquely named file of the session: Gradio caches outputs by content, and a shared PIL output
        name ("image.png") would be rewritten while another session with the same picture downloads it."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = lrm.preprocess(image, remove_background=remove_background,
                                        foreground_ratio=foreground_ratio)
            except (ImageError, ValueError) as err:
                raise _user_error(err) from None
        for w in caught:
            if issubclass(w.category, RuntimeWarning):
                gr.Warning(str(w.message))
        run = sessions.new_run(request)
        path = run / f"preprocessed-{run.name}.png"
        result.save(path)
        return str(path)

    @gpu(duration=120)
    def generate(pre_image, model_source, source_distance, mesh_resolution, threshold, video, views, fps,
                 frame_size, request: gr.Request, progress=gr.Progress()):
        """Planes, mesh and video from the preprocessed image."""
        if pre_image is None:
            raise gr.Error("Please upload an image first.", title="No image")
        progress(0.0, desc="Loading model")
        try:
            model = cache.get(model_source)
        except (ValueError, FileNotFoundError) as err:
            raise _user_error(err) from None
        if cache.note:
            gr.Warning(cache.note, title="Using the offline demo model")
            # recentred for the requested model: recentre again at the size the demo model was trained on
            image = load_image(pre_image).convert("RGBA")
            pre_image = recenter(image, model.infer_defaults.foreground_ratio, max(image.size))
        out = sessions.new_run(request)
        n_views, with_video = int(views), bool(video)
        weights = {"planes": (0.0, 0.1), "mesh": (0.1, 0.5 if with_video else 1.0), "video": (0.5, 1.0)}

        def report(stage, fraction):
            lo, hi = weights.get(stage, (0.0, 0.0))
            if stage == "video":
                desc = f"Rendering video frame {round(fraction * n_views)}/{n_views}"
            else:
                desc = {"planes": "Encoding image", "mesh": "Extracting mesh"}.get(stage, stage)
            progress(lo + (hi - lo) * fraction, desc=desc)

        hidden = gr.DownloadButton(value=None, visible=False)
        try:
            steps = reconstruct_steps(model, pre_image, out, name=f"openlrm-{out.name}", preprocessed=True,
                                      source_distance=source_distance, mesh_resolution=int(mesh_resolution),
                                      threshold=threshold, video=with_video, n_views=n_views, fps=int(fps),
                                      video_size=int(frame_size) // 2 * 2, progress=report)
            for stage, result in steps:
                files = result.files
                buttons = [gr.DownloadButton(value=str(files[k]), visible=True) if k in files else hidden
                           for k in ("glb", "obj", "ply", "mp4")]
                if stage == "mesh" and with_video:  # show the mesh while the video renders
                    yield (str(files["glb"]), None, *buttons, "Mesh ready; rendering the video…")
        except (ImageError, ValueError) as err:
            raise _user_error(err) from None
        except (torch.cuda.OutOfMemoryError, MemoryError):
            raise gr.Error("Out of memory: lower the mesh resolution or the frame size, or use a smaller model.",
                           title="Out of memory") from None
        stages = " · ".join(f"{k} {v:.2f} s" for k, v in result.timings.items() if k != "preprocess")
        total = sum(v for k, v in result.timings.items() if k != "preprocess")
        mesh_info = f"; mesh {len(result.mesh.vertices):,} vertices" if result.mesh is not None else ""
        who = (f"`{DEMO_MODEL}` (the offline demo model: `{model_source}` is not available here)" if cache.note
               else f"`{model_source}`")
        summary = f"**Done** in {total:.2f} s ({stages}) with {who} on {device}{mesh_info}."
        yield (str(files["glb"]) if "glb" in files else None, str(files["mp4"]) if "mp4" in files else None,
               *buttons, summary)

    def on_model_change(source):
        frame_size, mesh_size, foreground_ratio = settings_of(source)
        return gr.Slider(value=frame_size), gr.Slider(value=mesh_size), gr.Slider(value=foreground_ratio)

    # ---- layout ---------------------------------------------------------------------------------------------

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
            dl_glb = gr.DownloadButton("GLB", visible=False, elem_id="dl-glb")
            dl_obj = gr.DownloadButton("OBJ", visible=False, elem_id="dl-obj")
            dl_ply = gr.DownloadButton("PLY", visible=False, elem_id="dl-ply")
            dl_mp4 = gr.DownloadButton("MP4", visible=False, elem_id="dl-mp4")
        timings = gr.Markdown(elem_id="timings")
        with gr.Accordion("Settings", open=False):
            with gr.Row():
                model = gr.Dropdown([(c.label, c.source) for c in choices], value=default, label="Model",
                                    allow_custom_value=True, elem_id="model", scale=2)
                remove_bg = gr.Checkbox(defaults.remove_background, label="Remove background")
                frame_size, mesh_size, foreground_ratio = settings_of(default)
                if defaults.foreground_ratio is not None:
                    foreground_ratio = defaults.foreground_ratio
                ratio = gr.Slider(0.5, 1.0, foreground_ratio, step=0.05, label="Foreground ratio")
                distance = gr.Slider(1.0, 3.5, defaults.source_distance, step=0.1, label="Source camera distance")
            with gr.Row():
                mesh_res = gr.Slider(32, 512, defaults.mesh_resolution or mesh_size, step=32,
                                     label="Mesh resolution")
                threshold = gr.Slider(0.5, 20.0, defaults.threshold, step=0.5, label="Density threshold")
                video_on = gr.Checkbox(defaults.video, label="Render video")
                views = gr.Slider(8, 200, defaults.views, step=1, label="Video views")
                fps = gr.Slider(5, 60, defaults.fps, step=1, label="FPS")
                frame = gr.Slider(64, 512, frame_size, step=16, label="Frame size")
        outputs = [m3d, vid, dl_glb, dl_obj, dl_ply, dl_mp4, timings]
        settings = [model, distance, mesh_res, threshold, video_on, views, fps, frame]

        # Checking and preprocessing do not wait behind other users' generation jobs (their own concurrency);
        # `generate` is limited by the queue's default (one job at a time: one GPU).
        run = btn.click(check_input, [inp], None, concurrency_limit=None, api_visibility="private")
        run = run.success(preprocess_image, [inp, remove_bg, ratio], [pre], api_name="preprocess",
                          concurrency_limit=2, concurrency_id="preprocess")
        run.success(generate, [pre] + settings, outputs, api_name="generate")
        model.change(on_model_change, [model], [frame, mesh_res, ratio], api_visibility="private")

        examples = sorted(EXAMPLES_DIR.glob("*.png"))
        if examples:
            def example(image, request: gr.Request, progress=gr.Progress()):
                pre_image = preprocess_image(image, defaults.remove_background, foreground_ratio, request)
                *_, last = generate(pre_image, default, defaults.source_distance,
                                    defaults.mesh_resolution or mesh_size, defaults.threshold, defaults.video,
                                    defaults.views, defaults.fps, frame_size, request, progress)
                return (pre_image, *last)

            gr.Examples([[str(p)] for p in examples], inputs=[inp], outputs=[pre] + outputs, fn=example,
                        cache_examples=cache_examples, cache_mode="lazy", examples_per_page=12,
                        label="Examples (procedural objects made by this project)")
        demo.unload(sessions.close)
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
