"""Orbit video: render the planes around the object and write a browser-playable H.264 (yuv420p) MP4."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
from torch import Tensor

from .camera import ORBIT_HEIGHT, ORBIT_RADIUS, orbit_cameras
from .field import Field, Progress
from .options import FPS, N_VIEWS, check


def video_cameras(n_views: int, radius: float = ORBIT_RADIUS, height: float = ORBIT_HEIGHT, *, start: int = 0,
                  stop: int | None = None) -> Tensor:
    """The reference's v1.1 orbit cameras for n_views distinct frames -> [n_views, 25] (frames start..stop only).

    OpenLRM's `linspace` orbit repeats its first view at the end, which shows as a stutter when the video loops;
    here the orbit is built for n_views + 1 and the duplicate is dropped, so every frame is distinct.
    """
    return orbit_cameras(n_views + 1, radius, height, views=slice(start, n_views if stop is None else min(stop,
                                                                                                         n_views)))


def to_uint8(rgb: Tensor) -> np.ndarray:
    """Frames [M, 3, H, W] in [0, 1] -> uint8 [M, H, W, 3], truncating like the reference's video writer."""
    return (rgb.permute(0, 2, 3, 1).float().cpu().numpy() * 255).astype(np.uint8)


def video_writer(path: str | Path, fps: int):
    """An imageio writer of browser-playable H.264 (yuv420p, +faststart) frames [H, W, 3] uint8 to an MP4."""
    import imageio.v2 as imageio
    return imageio.get_writer(path, format="FFMPEG", fps=fps, codec="libx264", pixelformat="yuv420p", quality=8,
                              macro_block_size=2, ffmpeg_log_level="error", ffmpeg_params=["-movflags", "+faststart"])


@contextlib.contextmanager
def _encoder(path: Path):
    """An encoder call's error as one line naming the encoder and the file (ffmpeg gone: killed, or the disk full),
    without ffmpeg's command line and log."""
    try:
        yield
    except OSError as err:
        raise OSError(f"the video encoder (ffmpeg) stopped while writing {path.name}: "
                      f"{str(err).splitlines()[0]}") from None


def render_video(field: Field, path: str | Path, n_views: int = N_VIEWS, fps: int = FPS, size: int | None = None, *,
                 batch_views: int = 4, progress: Progress | None = None) -> Path:
    """Render `n_views` frames of the orbit of a field (`lrm.FastField` or `lrm.ReferenceField`) at size x size
    (default: the model's render size) into an MP4.

    Deterministic sampling. Frames are rendered `batch_views` at a time and streamed to the encoder, so memory does
    not grow with n_views. `progress(done, total)` is called after each frame.
    """
    size = check("video_size", size or field.infer_defaults.video_size)
    n_views, fps = check("n_views", n_views), check("fps", fps)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = video_writer(path, fps)
    try:
        for start in range(0, n_views, batch_views):  # cameras made, frames rendered and encoded per chunk
            report = None if progress is None else (lambda done, _, s=start: progress(s + done, n_views))
            cameras = video_cameras(n_views, start=start, stop=start + batch_views)
            rgb = field.render(cameras, size, progress=report)["rgb"]
            for frame in to_uint8(rgb):
                with _encoder(path):
                    writer.append_data(frame)
        with _encoder(path):
            writer.close()
    finally:
        with contextlib.suppress(OSError):
            writer.close()  # (after an error; closing twice is a no-op)
    return path
