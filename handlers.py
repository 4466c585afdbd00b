"""The app's event handlers (`app.py` lays the page out and wires them): each takes what the page or an API client
sends, asks the library (the model catalogue, the runner of jobs, the session folders) and gives back what the page
shows. User errors reach the page or client as a message and the server's log as one line.
"""

from __future__ import annotations

import contextlib
import numbers
import sys
import threading
import warnings
from pathlib import Path

import gradio as gr

import lrm
from lrm.options import MODEL_SETTINGS
from lrm.pipeline import output_stem
from lrm.serving import JobRequest
from lrm.sessions import Sessions

FILES = ("glb", "obj", "ply", "mp4")  # the download buttons
# /generate's parameters after (image, model) -> the `lrm.JobOptions` fields they set (the API keeps the names its
# clients know)
CONTROLS = {"source_distance": "source_distance", "mesh_resolution": "mesh_resolution", "threshold": "threshold",
            "video": "video", "views": "n_views", "fps": "fps", "frame_size": "video_size", "faces": "faces",
            "texture_size": "texture_size", "keep_floaters": "keep_floaters"}
CONTROL_OF = {field: control for control, field in CONTROLS.items()}
# This public page's bounds, tighter than the library's (`lrm.options.LIMITS`): the ends of its sliders and menus
APP_LIMITS = {"mesh_resolution": 512, "n_views": 200, "fps": 60, "video_size": 512, "faces": 200_000,
              "texture_size": 4096}
STAGE_TEXT = {"preprocess": "Reading the picture", "planes": "Encoding the image", "mesh": "Extracting the mesh",
              "asset": "Decimating, unwrapping, baking the texture"}
TITLES = {"user": "Cannot do that", "memory": "Out of memory", "crashed": "The model worker stopped",
          "cancelled": "Stopped", "busy": "Busy"}


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
            raise user_error("The upload is not an image that can be read; use a PNG, JPEG or WebP file.") from None
    image.preprocess = preprocess
    return image


def user_error(message: str, reason: str = "user") -> gr.Error:
    """The error a user sees; the server's log gets one line, not a traceback."""
    print(f"job refused or stopped ({reason}): {message}", file=sys.stderr, flush=True)
    return gr.Error(message, title=TITLES.get(reason, "Something went wrong"), print_exception=False)


def output_name(image: str) -> str:
    """The downloads' name: the picture's, without the `_input` that /preprocess adds ('cone_input.png' -> 'cone')."""
    return output_stem(Path(image).stem).removesuffix("_input") or "object"


def job_options(controls: dict, **options) -> lrm.JobOptions:
    """The job that /generate's controls describe (`CONTROLS`), within this page's limits (`APP_LIMITS`); a whole,
    odd frame size is rounded down to even. ValueError names the control."""
    values = {CONTROLS[k]: v for k, v in controls.items()} | options
    size = values.get("video_size")
    if isinstance(size, numbers.Real) and not isinstance(size, bool) and float(size).is_integer():
        values["video_size"] = int(size) // 2 * 2
    try:
        job = lrm.JobOptions(**values)
    except ValueError as err:  # "n_views must be ..." -> "views must be ..."
        name = str(err).split(" ", 1)[0]
        raise ValueError(CONTROL_OF.get(name, name) + str(err)[len(name):]) from None
    for field, limit in APP_LIMITS.items():
        if getattr(job, field) is not None and getattr(job, field) > limit:
            raise ValueError(f"{CONTROL_OF[field]} must be at most {limit:,} on this app, got {getattr(job, field):,}")
    return job


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
    """The app's event handlers, with what they share: the model catalogue, the runner of the jobs, the session
    folders, the defaults."""

    def __init__(self, device: str, defaults: lrm.JobOptions, sessions: Sessions, catalog: lrm.Catalog, runner):
        self.device, self.defaults, self.sessions, self.catalog, self.runner = \
            device, defaults, sessions, catalog, runner
        self.remover_ready = threading.Event()  # rembg's session is made in the background (`prepare_remover`)

    def prepare_remover(self) -> None:
        print("background removal: preparing rembg (its first start after an install compiles its code: about a "
              "minute) ...", file=sys.stderr, flush=True)
        why = lrm.default_remover().check()
        print(f"background removal: ready ({'GrabCut, as rembg cannot be used: ' + why if why else 'rembg'})",
              file=sys.stderr, flush=True)
        self.remover_ready.set()

    def banner(self):
        """The page's banner: offline, and (once known) whether rembg works."""
        text = self.catalog.banner
        if self.remover_ready.is_set() and (why := lrm.default_remover().unavailable):
            text += (f"\n\n**Background removal:** rembg cannot be used ({why}), so GrabCut cuts the objects out; "
                     "pictures with a transparent background are used as they are.")
        return gr.Markdown(text.strip(), visible=bool(text))

    def check_input(self, image):
        if image is None:
            raise gr.Error("Please upload an image first.", title="No image", print_exception=False)

    def preprocess(self, image: str, remove_background: bool, foreground_ratio: float, request: gr.Request,
                   progress=gr.Progress()):
        """Step 1 of 2: cut the object out of a picture and centre it. Pass the result to /generate.

        Args:
            image: the picture (PNG, JPEG, WebP, ...; one object).
            remove_background: remove the background (skipped when the picture already has transparency).
            foreground_ratio: the object's size after centring, as a fraction of the square picture's side.
        Returns:
            the preprocessed picture: a 512 px PNG with a transparent background.
        """
        self.check_input(image)
        if remove_background and not self.remover_ready.is_set():
            progress(0.0, desc="Preparing background removal (its first start after an install: about a minute)")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = lrm.preprocess(image, remove_background=remove_background, foreground_ratio=foreground_ratio)
            except ValueError as err:
                raise user_error(str(err)) from None
        for w in caught:
            if issubclass(w.category, RuntimeWarning):
                gr.Warning(str(w.message))
        # in a folder of this run: another session's picture of the same name never overwrites it
        path = self.sessions.new_run(request) / f"{output_name(image)}_input.png"
        result.save(path)
        return str(path)

    def unload(self, request: gr.Request):
        """The session's heartbeat stream has closed (a closed tab, or a dropped connection that may come back)."""
        self.sessions.left(request)

    def on_model_change(self, name: str):
        """The model-dependent controls (`lrm.options.MODEL_SETTINGS`) set to the settings of the model that runs."""
        own = self.catalog.settings(name)
        return tuple(gr.Slider(value=getattr(own, k)) for k in MODEL_SETTINGS)

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
            mesh_resolution: the marching-cubes grid (at most 512 here).
            threshold: the density level of the surface.
            video: also render the orbit video.
            views: the video's frames (at most 200 here).
            fps: the video's frame rate (at most 60 here).
            frame_size: the video's frame size in pixels (rounded down to an even number; at most 512 here).
            faces: the GLB / OBJ asset's triangles after decimation (0: every marching-cubes triangle; at most
                200,000 here).
            texture_size: the side of its baked texture (0: vertex colours; a power of two, at most 4096 here).
            keep_floaters: keep small disconnected pieces.
        Returns:
            the GLB (light, textured), OBJ (with a texture: a zip of the OBJ, its MTL and PNG) and PLY (OpenLRM's dense
            mesh) meshes and the MP4 orbit video (None where not made), and a summary.
        """
        self.check_input(image)
        self.sessions.touch(request)
        try:
            choice = self.catalog.choose(model)
            options = job_options(dict(source_distance=source_distance, mesh_resolution=mesh_resolution,
                                       threshold=threshold, video=video, views=views, fps=fps, frame_size=frame_size,
                                       faces=faces, texture_size=texture_size, keep_floaters=keep_floaters),
                                  remove_background=False)  # a stand-in model recentres it at its own size
            job = JobRequest(choice.source, Path(image).read_bytes(), options, output_name(image),
                             preprocessed=choice.note is None)
        except (ValueError, OSError) as err:
            raise user_error(str(err)) from None
        if choice.note:
            gr.Warning(choice.note, title="Using the offline demo model")
        yield None, None, None, None, "Working…"  # a new run clears the last one's results
        with self.sessions.job(request) as run, self.stopped_log(run):
            files: dict[str, Path] = {}
            for event in self.runner.submit(job, stop=lambda: self.sessions.gone(request)):
                if event.kind == "failed":
                    raise user_error(event.message[:1].upper() + event.message[1:], event.reason)
                if event.kind == "files":
                    files |= {k: run / name for k, (name, _) in event.files.items()}
                    for name, data in event.files.values():
                        (run / name).write_bytes(data)
                    if event.stage == "asset" and options.video:  # the mesh, to turn around while the video renders
                        yield *self.downloads(files), "Mesh ready; rendering the video…"
                elif event.kind == "done":
                    for problem in event.problems:
                        gr.Warning(problem, title="Not everything could be made")
                    yield *self.downloads(files), self.summary(event, model, event.note or choice.note)
                else:
                    self.show(progress, event, options)

    @contextlib.contextmanager
    def stopped_log(self, run: Path):
        """Logs a run stopped because its client went: by us (no connection for the grace period) or by Gradio (the
        client's result stream closed: it stops reading this generator and closes it)."""
        try:
            yield
        except GeneratorExit:
            self.sessions.cancelled.append(run.name)
            raise
        except gr.Error as err:
            if err.title == TITLES["cancelled"]:
                self.sessions.cancelled.append(run.name)
            raise

    @staticmethod
    def downloads(files: dict[str, Path]) -> list[str | None]:
        """The files of the download buttons (`FILES`; None where not made); a textured OBJ as one zip with its MTL
        and texture (`lrm.bundle_obj`)."""
        files = dict(files, obj=lrm.bundle_obj(files["obj"])) if "obj" in files else files
        return [str(files[k]) if k in files else None for k in FILES]

    @staticmethod
    def show(progress, event, options: lrm.JobOptions) -> None:
        if event.kind == "waiting":
            progress(0.0, desc=event.message)
        elif event.stage == "video":
            progress((round(event.fraction * options.n_views), options.n_views), desc="Rendering the video",
                     unit="frames")
        else:
            progress(event.fraction, desc=STAGE_TEXT.get(event.stage))

    def summary(self, done, model: str, note: str | None) -> str:
        who = f"`{lrm.DEMO_MODEL}` (the offline demo model: `{model}` is not available here)" if note else f"`{model}`"
        made, *problems = done.summary.splitlines()
        return f"**Done** with {who} on {self.device}: {made}." + "".join(
            f"\n\n**Not made:** {p.removeprefix('not made: ')}" for p in problems)

    def example(self, image, request: gr.Request, progress=gr.Progress()):
        """An example through both steps with the default model at the default settings."""
        job = self.defaults.for_model(self.catalog.settings(self.catalog.default))
        pre = self.preprocess(image, job.remove_background, job.foreground_ratio, request, progress)
        *_, last = self.generate(pre, self.catalog.default, **controls_of(job), request=request, progress=progress)
        return (pre, *last)
