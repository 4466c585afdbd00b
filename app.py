"""Gradio demo: drag an image in, get the preprocessed image, an interactive mesh and an orbit video side by side.

    python app.py [--model ID_OR_PATH ...] [--device cpu|cuda] [--host H] [--port P] [--share] [--auth user:pass]
                  [--queue-size N] [--offline]

`build_demo()` returns the `gr.Blocks` without launching it; `main()` parses the flags and launches.
"""

from __future__ import annotations

import argparse
import numbers
import os
import shutil
import signal
import warnings
from pathlib import Path

import gradio as gr
import torch

import lrm
from lrm.options import MODEL_SETTINGS
from lrm.pipeline import output_stem
from lrm.sessions import SESSION_ROOT, SESSION_TTL_S, Sessions, JobCancelled, sweep_dead_runs

try:  # ZeroGPU on Hugging Face Spaces; a no-op decorator everywhere else
    import spaces

    gpu = spaces.GPU
except ImportError:
    def gpu(fn=None, **_):
        return fn if fn is not None else (lambda f: f)

EXAMPLES_DIR = Path(__file__).parent / "examples"
MAX_UPLOAD_MB = 20  # uploads above this are refused before they reach the disk's cache
TITLE = "OpenLRM: one image to a 3D object"
FILES = ("glb", "obj", "ply", "mp4")  # the download buttons
# /generate's parameters after (image, model) -> the `lrm.JobOptions` fields they set (the API keeps the names its
# clients know)
CONTROLS = {"source_distance": "source_distance", "mesh_resolution": "mesh_resolution", "threshold": "threshold",
            "video": "video", "views": "n_views", "fps": "fps", "frame_size": "video_size", "faces": "faces",
            "texture_size": "texture_size", "keep_floaters": "keep_floaters"}
STAGE_TEXT = {"planes": "Encoding the image", "mesh": "Extracting the mesh",
              "asset": "Decimating, unwrapping, baking the texture"}


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


def user_error(err: Exception) -> gr.Error:
    return gr.Error(str(err), title="Cannot do that")


def output_name(image: str) -> str:
    """The downloads' name: the picture's, without the `_input` that /preprocess adds ('cone_input.png' -> 'cone')."""
    return output_stem(Path(image).stem).removesuffix("_input") or "object"


def download_files(result: lrm.Reconstruction) -> list[str | None]:
    """The files of the download buttons (`FILES`; None where not made); a textured OBJ as one zip with its MTL and
    texture (`lrm.bundle_obj`)."""
    files = dict(result.files)
    if "obj" in files:
        files["obj"] = lrm.bundle_obj(files["obj"])
    return [str(files[k]) if k in files else None for k in FILES]


def job_options(controls: dict, **options) -> lrm.JobOptions:
    """The job that /generate's controls describe (`CONTROLS`); a whole, odd frame size is rounded down to even."""
    values = {CONTROLS[k]: v for k, v in controls.items()} | options
    size = values.get("video_size")
    if isinstance(size, numbers.Real) and not isinstance(size, bool) and float(size).is_integer():
        values["video_size"] = int(size) // 2 * 2
    return lrm.JobOptions(**values)


def controls_of(job: lrm.JobOptions) -> dict:
    """/generate's control values for a job: `job_options`'s inverse."""
    return {k: getattr(job, field) for k, field in CONTROLS.items()}


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
    """The app's event handlers, with what they share: the model catalogue and cache, the session folders, the
    defaults."""

    def __init__(self, device: str, defaults: lrm.JobOptions, sessions: Sessions, catalog: lrm.Catalog):
        self.device, self.defaults, self.sessions, self.catalog = device, defaults, sessions, catalog
        self.cache = lrm.ModelCache(device)

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

    def unload(self, request: gr.Request):
        """The session's page has closed."""
        self.sessions.close(request)

    def on_model_change(self, name: str):
        """The model-dependent controls (`lrm.options.MODEL_SETTINGS`) set to the settings of the model that runs."""
        own = self.catalog.settings(name)
        return tuple(gr.Slider(value=getattr(own, k)) for k in MODEL_SETTINGS)

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
            frame_size: the video's frame size in pixels (rounded down to an even number).
            faces: the GLB / OBJ asset's triangles after decimation (0: every marching-cubes triangle).
            texture_size: the side of its baked texture (0: vertex colours).
            keep_floaters: keep small disconnected pieces.
        Returns:
            the GLB (light, textured), OBJ (with a texture: a zip of the OBJ, its MTL and PNG) and PLY (OpenLRM's dense
            mesh) meshes and the MP4 orbit video (None where not made), and a summary.
        """
        self.check_input(image)
        controls = dict(source_distance=source_distance, mesh_resolution=mesh_resolution, threshold=threshold,
                        video=video, views=views, fps=fps, frame_size=frame_size, faces=faces,
                        texture_size=texture_size, keep_floaters=keep_floaters)
        progress(0.0, desc="Loading the model")
        try:
            choice = self.catalog.choose(model)
            options = job_options(controls, remove_background=False)  # a stand-in model recentres at its own size
            loaded = self.cache.get(choice.source)
        except (ValueError, FileNotFoundError) as err:
            raise user_error(err) from None
        note = choice.note or self.cache.note
        if note:
            gr.Warning(note, title="Using the offline demo model")

        def report(stage, fraction):
            self.sessions.check(request)  # stop when the browser tab has gone
            if stage == "video":
                progress((round(fraction * options.n_views), options.n_views), desc="Rendering the video",
                         unit="frames")
            else:
                progress(fraction, desc=STAGE_TEXT.get(stage))

        yield None, None, None, None, "Working…"  # a new run clears the last one's results
        try:
            with self.sessions.job(request):
                out = self.sessions.new_run(request)
                for stage, result in lrm.reconstruct_steps(loaded, image, out, options, name=output_name(image),
                                                           preprocessed=not note, progress=report):
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
        yield *files, self.summary(result, model, note)

    def summary(self, result: lrm.Reconstruction, model: str, note: str | None) -> str:
        who = f"`{lrm.DEMO_MODEL}` (the offline demo model: `{model}` is not available here)" if note else f"`{model}`"
        made, *problems = result.summary().splitlines()
        return f"**Done** with {who} on {self.device}: {made}." + "".join(
            f"\n\n**Not made:** {p.removeprefix('not made: ')}" for p in problems)

    def example(self, image, request: gr.Request, progress=gr.Progress()):
        """An example through both steps with the default model at the default settings."""
        job = self.defaults.for_model(self.catalog.settings(self.catalog.default))
        pre = self.preprocess(image, job.remove_background, job.foreground_ratio, request)
        *_, last = self.generate(pre, self.catalog.default, **controls_of(job), request=request, progress=progress)
        return (pre, *last)


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
            c["mesh_resolution"] = gr.Slider(32, 512, d.mesh_resolution, step=32, label="Mesh resolution")
            c["threshold"] = gr.Slider(0.5, 20.0, d.threshold, step=0.5, label="Density threshold")
            c["video"] = gr.Checkbox(d.video, label="Render video")
            c["n_views"] = gr.Slider(8, 200, d.n_views, step=1, label="Video views")
            c["fps"] = gr.Slider(5, 60, d.fps, step=1, label="FPS")
            c["video_size"] = gr.Slider(64, 512, d.video_size, step=16, label="Frame size")
        with gr.Row():
            c["faces"] = gr.Slider(0, 200_000, d.faces, step=1000, label="Triangles of the GLB / OBJ (0: all)")
            c["texture_size"] = gr.Dropdown([("vertex colours", 0), ("512²", 512), ("1024²", 1024), ("2048²", 2048),
                                             ("4096²", 4096)], value=d.texture_size, label="Texture")
            c["keep_floaters"] = gr.Checkbox(d.keep_floaters, label="Keep small pieces (floaters)")
    return c


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
    catalog = lrm.Catalog(models or [])
    h = Handlers(device, defaults or lrm.JobOptions(), sessions or Sessions(), catalog)
    banner = catalog.banner
    if why := lrm.default_remover().check():  # once, at start-up: is rembg's model here?
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
        outputs = [*downloads, gr.Markdown(elem_id="timings", label="Summary")]
        c = settings_panel(h.defaults.for_model(catalog.settings(catalog.default)), catalog)

        # Checking and preprocessing do not wait behind other users' generation jobs (their own concurrency);
        # `generate` is limited by the queue's default (one job at a time: one GPU). Its progress shows on the video
        # panel only, so the mesh can be turned while the video renders.
        run = btn.click(h.check_input, [inp], None, concurrency_limit=None, api_visibility="private")
        run = run.success(h.preprocess, [inp, c["remove_background"], c["foreground_ratio"]], [pre],
                          api_name="preprocess", concurrency_limit=2, concurrency_id="preprocess")
        run.success(h.generate, [pre, c["model"], *(c[field] for field in CONTROLS.values())], outputs,
                    api_name="generate", show_progress_on=[vid])
        for button, viewer in zip(downloads, [m3d, None, None, vid]):
            if viewer:
                button.change(shown_with_viewer, [button, viewer], [button, viewer], api_visibility="private",
                              queue=False, show_progress="hidden")
            else:
                button.change(shown_if_set, [button], [button], api_visibility="private", queue=False,
                              show_progress="hidden")
        c["model"].change(h.on_model_change, [c["model"]], [c[k] for k in MODEL_SETTINGS], api_visibility="private")
        if examples := sorted(EXAMPLES_DIR.glob("*.png")):
            gr.Examples([[str(p)] for p in examples], inputs=[inp], outputs=[pre] + outputs, fn=h.example,
                        cache_examples=cache_examples, cache_mode="lazy", examples_per_page=12,
                        label="Examples (procedural objects made by this project; click one to see its result)")
        demo.unload(h.unload)
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
