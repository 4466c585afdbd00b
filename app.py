"""Gradio demo: drag an image in, get the preprocessed image, an interactive mesh and an orbit video side by side.

    python app.py [--model ID_OR_PATH ...] [--device cpu|cuda] [--host H] [--port P] [--share] [--auth user:pass]
                  [--queue-size N] [--max-upload-mb MB] [--offline]
                  [--serve [ADDRESS] [--replicas N|MIN-MAX] [--gpus-per-replica G] [--threads-per-replica T]]

`build_demo()` returns the `gr.Blocks` without launching it; `main()` parses the flags and launches. The jobs run away
from the web server (`lrm.serving`): in a model worker process, on Ray Serve replicas (--serve), or on ZeroGPU in the
`spaces.GPU` function.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

import gradio as gr
import torch
from starlette.middleware import Middleware

import lrm
from handlers import APP_LIMITS, CONTROLS, FILES, Handlers, image_upload, shown_if_set, shown_with_viewer
from lrm.options import MODEL_SETTINGS
from lrm.serving import InProcessRunner, LocalRunner
from lrm.sessions import SESSION_ROOT, SESSION_TTL_S, PresenceMiddleware, Sessions, sweep_dead_runs

try:  # ZeroGPU on Hugging Face Spaces; a no-op decorator everywhere else
    import spaces

    gpu = spaces.GPU
except ImportError:
    def gpu(fn=None, **_):
        return fn if fn is not None else (lambda f: f)

EXAMPLES_DIR = Path(__file__).parent / "examples"
MAX_UPLOAD_MB = 20  # uploads above this are refused before they reach the disk's cache
TITLE = "OpenLRM: one image to a 3D object"


def settings_panel(d: lrm.JobOptions, catalog: lrm.Catalog) -> dict:
    """The settings accordion, its first values from the job `d` -> the controls by name: "model", the
    `lrm.JobOptions` fields the app offers."""
    with gr.Accordion("Settings", open=False):
        with gr.Row():
            c = {"model": gr.Dropdown(catalog.choices, value=catalog.default, label="Model", elem_id="model", scale=2),
                 "remove_background": gr.Checkbox(d.remove_background, label="Remove background"),
                 "foreground_ratio": gr.Slider(0.5, 1.0, d.foreground_ratio, step=0.05, label="Foreground ratio"),
                 "source_distance": gr.Slider(1.0, 3.5, d.source_distance, step=0.1, label="Source camera distance")}
        with gr.Row():
            limit = APP_LIMITS
            c["mesh_resolution"] = gr.Slider(32, limit["mesh_resolution"], d.mesh_resolution, step=32,
                                             label="Mesh resolution")
            c["threshold"] = gr.Slider(0.5, 20.0, d.threshold, step=0.5, label="Density threshold")
            c["video"] = gr.Checkbox(d.video, label="Render video")
            c["n_views"] = gr.Slider(8, limit["n_views"], d.n_views, step=1, label="Video views")
            c["fps"] = gr.Slider(5, limit["fps"], d.fps, step=1, label="FPS")
            c["video_size"] = gr.Slider(64, limit["video_size"], d.video_size, step=16, label="Frame size")
        with gr.Row():
            c["faces"] = gr.Slider(0, limit["faces"], d.faces, step=1000, label="Triangles of the GLB / OBJ (0: all)")
            c["texture_size"] = gr.Dropdown([("vertex colours", 0)] + [(f"{n}²", n) for n in (512, 1024, 2048, 4096)
                                                                        if n <= limit["texture_size"]],
                                            value=d.texture_size, label="Texture")
            c["keep_floaters"] = gr.Checkbox(d.keep_floaters, label="Keep small pieces (floaters)")
    return c


def build_demo(models: list[str] | None = None, device: str | None = None, *, defaults: lrm.JobOptions | None = None,
               cache_examples: bool = True, sessions: Sessions | None = None, runner=None) -> gr.Blocks:
    """The demo's Blocks (not launched; `launch` adds what tells when a client has gone).

    Args:
        models: extra checkpoints (local folders/files or Hub ids) offered first in the model menu; the first
            loadable one is selected, else the reference demo's model.
        device: "cpu" or "cuda" (default: cuda when available).
        defaults: initial control values (unset ones follow the selected model).
        cache_examples: cache example outputs on first use (lazily).
        runner: what runs the jobs (`lrm.serving`), or a function making it from the model to warm up (default: one
            model worker process, started at the first job).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    catalog = lrm.Catalog(models or [])
    if runner is None or callable(runner):
        warm = catalog.choose(catalog.default).source
        runner = runner(warm) if runner else LocalRunner(device, warm=warm)
    h = Handlers(device, defaults or lrm.JobOptions(), sessions or Sessions(), catalog, runner)
    threading.Thread(target=h.prepare_remover, name="rembg", daemon=True).start()
    with gr.Blocks(title=TITLE, delete_cache=(900, SESSION_TTL_S)) as demo:
        gr.Markdown(f"# {TITLE}\nUpload or drop a picture of one object. You get the cut-out input, a coloured "
                    "mesh you can turn around, and an orbit video. Weights: OpenLRM, "
                    "[CC BY-NC 4.0](https://creativecommons.org/licenses/by-nc/4.0/) (non-commercial).")
        banner = gr.Markdown(catalog.banner, visible=bool(catalog.banner), elem_id="banner")
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
        outputs = [*downloads, gr.Markdown(elem_id="timings", label="Summary")]
        c = settings_panel(h.defaults.for_model(catalog.settings(catalog.default)), catalog)

        # Checking and preprocessing do not wait behind other users' generation jobs (their own concurrency);
        # `generate` runs as many jobs at once as the runner has workers. Its progress shows on the video panel only,
        # so the mesh can be turned while the video renders.
        run = btn.click(h.check_input, [inp], None, concurrency_limit=None, api_visibility="private")
        run = run.success(h.preprocess, [inp, c["remove_background"], c["foreground_ratio"]], [pre],
                          api_name="preprocess", concurrency_limit=2, concurrency_id="preprocess")
        run.success(h.generate, [pre, c["model"], *(c[field] for field in CONTROLS.values())], outputs,
                    api_name="generate", show_progress_on=[vid], concurrency_limit=runner.concurrency)
        _show_when_set(downloads, [m3d, None, None, vid])
        c["model"].change(h.on_model_change, [c["model"]], [c[k] for k in MODEL_SETTINGS], api_visibility="private")
        if examples := sorted(EXAMPLES_DIR.glob("*.png")):
            gr.Examples([[str(p)] for p in examples], inputs=[inp], outputs=[pre] + outputs, fn=h.example,
                        cache_examples=cache_examples, cache_mode="lazy", examples_per_page=12,
                        label="Examples (procedural objects made by this project; click one to see its result)")
        demo.load(h.banner, None, banner, api_visibility="private", queue=False)
        demo.unload(h.unload)
    demo.handlers = h
    return demo


def _show_when_set(downloads: list, viewers: list) -> None:
    """Each download button shows once it has a file (with its viewer, where it has one)."""
    for button, viewer in zip(downloads, viewers):
        if viewer:
            button.change(shown_with_viewer, [button, viewer], [button, viewer], api_visibility="private",
                          queue=False, show_progress="hidden")
        else:
            button.change(shown_if_set, [button], [button], api_visibility="private", queue=False,
                          show_progress="hidden")


def launch(demo: gr.Blocks, **kwargs):
    """`demo.launch(**kwargs)` with the middleware that tells the app's sessions when a client has gone."""
    presence = Middleware(PresenceMiddleware, sessions=demo.handlers.sessions)
    return demo.launch(app_kwargs={"middleware": [presence]}, **kwargs)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", default=[],
                   help="a local checkpoint folder/file or Hub id to offer first (repeatable)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="[default: cuda if available]")
    p.add_argument("--host", default=None, help="address to bind [default: 127.0.0.1, or $GRADIO_SERVER_NAME]")
    p.add_argument("--port", type=int, default=None, help="[default: first free port from 7860]")
    p.add_argument("--share", action="store_true", help="also create a public gradio.live link")
    p.add_argument("--auth", default=None, metavar="USER:PASS", help="require this login")
    p.add_argument("--queue-size", type=int, default=20,
                   help="waiting jobs before new ones are refused [default: %(default)s]")
    p.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB,
                   help=f"refuse larger uploads [default: {MAX_UPLOAD_MB}]")
    p.add_argument("--offline", action="store_true", help="never contact the Hugging Face Hub")
    p.add_argument("--serve", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run the jobs on Ray Serve replicas: on a local cluster, or on the one at ADDRESS")
    p.add_argument("--replicas", default="1", metavar="N|MIN-MAX",
                   help="with --serve: model replicas (jobs at once), or a range to autoscale in [default: 1]")
    p.add_argument("--gpus-per-replica", type=float, default=None,
                   help="with --serve: GPUs per replica [default: 1 with --device cuda, else 0: CPU threads]")
    p.add_argument("--threads-per-replica", type=int, default=None,
                   help="with --serve: CPU threads per replica [default: on a local cluster, this machine's cores / "
                   "replicas; 1 on a joined cluster or with GPUs]")
    return p.parse_args(argv)


def make_runner(args: argparse.Namespace, device: str, warm: str | None):
    """The runner the flags ask for: Ray Serve (--serve), the `spaces.GPU` function on ZeroGPU, else a worker
    process."""
    if args.serve:
        from lrm.serve import ServeRunner, parse_replicas
        gpus = args.gpus_per_replica if args.gpus_per_replica is not None else float(device == "cuda")
        return ServeRunner(None if args.serve == "local" else args.serve, parse_replicas(args.replicas), gpus,
                           args.threads_per_replica, warm)
    if os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true"):
        return InProcessRunner(device, gpu)
    return LocalRunner(device, warm=warm)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.offline:
        import huggingface_hub.constants as hf_constants
        os.environ["HF_HUB_OFFLINE"] = "1"
        hf_constants.HF_HUB_OFFLINE = True
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device == "cuda" and not torch.cuda.is_available() and not args.serve:
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
    runner = None
    try:
        demo = build_demo(args.model, device, runner=lambda warm: make_runner(args, device, warm))
        runner = demo.handlers.runner
        runner.start()  # the worker loads the model and prepares the renderer while the page is served
        signal.signal(signal.SIGTERM, stop)  # (again: ray.init sets its own)
        demo.queue(default_concurrency_limit=1, max_size=args.queue_size)
        launch(demo, server_name=args.host, server_port=args.port, share=args.share, auth=auth, show_error=True,
               max_file_size=f"{args.max_upload_mb}mb")
    except KeyboardInterrupt:
        pass
    except ValueError as err:  # a ServeError: the cluster cannot be used as asked
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    finally:
        if runner is not None:
            runner.close()
        shutil.rmtree(run_root, ignore_errors=True)


if __name__ == "__main__":
    main()
