"""Images in: open anything PIL reads, remove the background, recentre the object; and the reference's image -> tensor.

`preprocess` returns a square RGBA image with the object centred and scaled so that its bounding box fills
`foreground_ratio` of the side (the reference app: rembg + recentre on a 512 px canvas). Background removal uses rembg
with one reused session; when rembg's model cannot be obtained (offline) it falls back to the image's own alpha,
else to OpenCV GrabCut seeded from the image border, with a warning.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from .config import InferDefaults
from .options import check

# a PIL image, a path, an array, the bytes of an image file or a binary file object
ImageInput = Union[Image.Image, str, os.PathLike, np.ndarray, bytes, io.IOBase]

MIN_SIDE = 16                 # smaller images hold no usable object
MAX_PIXELS = 64_000_000       # refuse decompression-bomb sized images (PIL's own limit warns at 89 M pixels)
MAX_SIDE = 2048               # larger images are scaled down first: the models see at most 448 px, rembg's u2net 320
ALPHA_THRESHOLD = 127         # alpha above this is foreground for the bounding box
CANVAS_SIZE = 512             # the recentred picture's side (the reference app's)


class ImageError(ValueError):
    """The image cannot be used; the message says why and what to do."""


# ----------------------------------------------------------------------------------------------------------------
# Loading


def _to_rgb_or_rgba(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB or RGBA (8 bit), keeping transparency where the image has it."""
    if image.mode in ("RGB", "RGBA"):
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # High bit depth greyscale: scale the actual range to 8 bit (a plain convert would clip at 255).
        a = np.asarray(image, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo) * 255
        return Image.fromarray(a.round().astype(np.uint8), "L").convert("RGB")
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    if image.mode == "CMYK":
        return image.convert("RGB")
    return image.convert("RGBA" if has_alpha else "RGB")


def load_image(image: ImageInput, max_side: int | None = MAX_SIDE, *, name: str | None = None) -> Image.Image:
    """Open a path / PIL image / uint8 array / image file's bytes / binary file object as RGB or RGBA: EXIF rotation
    applied, first frame of animations, and scaled down to `max_side` pixels on its longer side (None: as it is).

    Messages name the file, not its folder (they may reach other people, e.g. through the app); `name` names bytes or
    a file object in them.
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ImageError(f"an image array must be uint8 HxW, HxWx3 or HxWx4, got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    elif not isinstance(image, Image.Image):
        if isinstance(image, (bytes, bytearray, memoryview)):
            name, source = name or "the image", io.BytesIO(image)
            size = len(source.getbuffer())
        elif isinstance(image, io.IOBase) or hasattr(image, "read"):
            name, source, size = name or Path(str(getattr(image, "name", "the image"))).name, image, None
        else:
            path = Path(image)
            name, source = name or path.name, path
            if path.is_dir():
                raise ImageError(f"{name} is a folder, not an image file")
            if not path.is_file():
                raise ImageError(f"{name}: no such file")
            size = path.stat().st_size
        if size == 0:
            raise ImageError(f"{name} is empty (0 bytes)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(source)  # reads the header only
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(f"{name} is too large to process safely; use an image under "
                             f"{MAX_PIXELS // 1_000_000} megapixels") from None
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise ImageError(f"{name} is not an image that can be read ({type(err).__name__}); use a PNG, JPEG "
                             "or WebP file") from None
        if max_side and image.width * image.height <= MAX_PIXELS and image.format == "JPEG":
            image.draft(image.mode, (max_side, max_side))  # decode at 1/2, 1/4 or 1/8 scale: a fraction of the memory
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageError(f"the image is too large ({width}x{height}); use one under {MAX_PIXELS // 1_000_000} "
                         "megapixels")
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"the image is too small ({width}x{height}); use one at least {MIN_SIDE} px on each side")
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)  # animated GIF / WebP / APNG: the first frame
        image.load()
        image = ImageOps.exif_transpose(image) or image
        if max_side and max(image.size) > max_side:
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        return _to_rgb_or_rgba(image)
    except (OSError, SyntaxError, ValueError) as err:  # a truncated or corrupted file shows only when decoded
        raise ImageError(f"the image cannot be decoded ({type(err).__name__}: {err}); the file is truncated or "
                         "corrupted") from None


def check_visible(image: Image.Image) -> Image.Image:
    """The image itself, unless it is fully transparent (`ImageError`)."""
    if image.mode == "RGBA" and image.getchannel("A").getextrema()[1] == 0:
        raise ImageError("the image is fully transparent; there is nothing to reconstruct")
    return image


def has_meaningful_alpha(image: Image.Image) -> bool:
    """True when an RGBA image's alpha actually separates something (not all opaque, not all transparent)."""
    if image.mode != "RGBA":
        return False
    lo, hi = image.getchannel("A").getextrema()
    return lo < 255 and hi > 0


# ----------------------------------------------------------------------------------------------------------------
# Background removal


class BackgroundRemover:
    """rembg with one session created on first use; falls back to GrabCut when rembg's model is unavailable.

    The rembg model is `u2net` unless LRM_REMBG_MODEL names another rembg session; LRM_REMBG_MODEL_PATH points
    at a local ONNX file (used as rembg's `u2net_custom`), e.g. on a machine without network.
    """

    def __init__(self, model_name: str | None = None, model_path: str | None = None):
        self.model_name = model_name or os.environ.get("LRM_REMBG_MODEL", "u2net")
        self.model_path = model_path or os.environ.get("LRM_REMBG_MODEL_PATH")
        self._session = None
        self.unavailable: str | None = None  # why rembg cannot be used, once known

    def session(self):
        if self._session is None and self.unavailable is None:
            try:
                import rembg  # noqa: F401  (exits the process without onnxruntime: SystemExit, caught below)
                if self.model_path:
                    self._session = _local_session(self.model_path)
                else:
                    self._session = rembg.new_session(self.model_name)
            except (Exception, SystemExit) as err:  # offline download failure, missing onnxruntime, bad file
                self.unavailable = _why_unavailable(err, self.model_path or self.model_name)
        return self._session

    def check(self) -> str | None:
        """Make rembg's session now (once per process) -> None when it works, else why it cannot be used."""
        self.session()
        return self.unavailable

    def __call__(self, image: Image.Image) -> Image.Image:
        """RGB(A) image -> RGBA with the background transparent."""
        session = self.session()
        if session is not None:
            import rembg
            return rembg.remove(image.convert("RGB"), session=session).convert("RGBA")
        warnings.warn(f"rembg's background removal is unavailable ({self.unavailable}); GrabCut, seeded from the "
                      "image border, cut the object out instead. For better cut-outs give the image an alpha channel, "
                      "or point LRM_REMBG_MODEL_PATH at a local u2net.onnx (see README).", RuntimeWarning, stacklevel=2)
        return grabcut_foreground(image)


def _local_session(model_path: str):
    """rembg's `u2net_custom` session on a local ONNX file, wherever it is: rembg itself only takes a file inside its
    home folder (from U2NET_HOME, read at call time), and this takes the file as given instead of setting that
    variable for the whole process."""
    import onnxruntime
    from rembg.sessions.u2net_custom import U2netCustomSession

    path = Path(model_path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path.name}: File doesn't exist")

    class LocalU2net(U2netCustomSession):
        @classmethod
        def download_models(cls, *args, **kwargs):
            return str(path)

    return LocalU2net("u2net_custom", onnxruntime.SessionOptions(), model_path=str(path))


def _why_unavailable(err: BaseException, model: str) -> str:
    """A short, whole-word reason why rembg's session could not be made."""
    names = {type(e).__name__ for e in (err, err.__cause__, err.__context__) if e is not None}
    if names & {"ConnectionError", "NameResolutionError", "MaxRetryError", "URLError", "gaierror", "Timeout",
                "ConnectTimeout", "ReadTimeout"}:
        return f"its model '{model}' is not on this machine and could not be downloaded (no network)"
    if isinstance(err, SystemExit):
        return "onnxruntime is not installed (pip install 'rembg[cpu]')"
    text = " ".join(str(err).split())
    if len(text) > 200:
        text = text[:200].rsplit(" ", 1)[0] + " …"
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def grabcut_foreground(image: Image.Image, work_size: int = 320, iterations: int = 5) -> Image.Image:
    """Foreground by OpenCV GrabCut, with a border band marked as background -> RGBA.

    GrabCut's mask is then cleaned: a morphological opening removes thin structures (a horizon line, a table edge
    running across the picture) and only connected pieces of at least a tenth of the largest one's area stay.
    """
    import cv2

    rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    scale = min(1.0, work_size / max(h, w))
    small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    sh, sw = small.shape[:2]
    band = max(2, round(0.03 * max(sh, sw)))
    mask = np.full((sh, sw), cv2.GC_PR_FGD, np.uint8)
    mask[:band], mask[-band:], mask[:, :band], mask[:, -band:] = cv2.GC_BGD, cv2.GC_BGD, cv2.GC_BGD, cv2.GC_BGD
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(cv2.cvtColor(small, cv2.COLOR_RGB2BGR), mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    fg = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)
    size = max(3, round(0.02 * max(sh, sw)) | 1)  # odd, ~2 % of the picture: wider than a line, narrower than a part
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if count > 1:
        areas = stats[1:, cv2.CC_STAT_AREA]
        fg = np.isin(labels, 1 + np.nonzero(areas >= 0.1 * areas.max())[0]).astype(np.uint8)
    alpha = cv2.resize(fg * 255, (w, h), interpolation=cv2.INTER_LINEAR)
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


_DEFAULT_REMOVER: BackgroundRemover | None = None


def default_remover() -> BackgroundRemover:
    """The shared background remover (one rembg session per process)."""
    global _DEFAULT_REMOVER
    if _DEFAULT_REMOVER is None:
        _DEFAULT_REMOVER = BackgroundRemover()
    return _DEFAULT_REMOVER


# ----------------------------------------------------------------------------------------------------------------
# Recentring


def recenter(image: Image.Image, foreground_ratio: float = InferDefaults.foreground_ratio,
             size: int = CANVAS_SIZE) -> Image.Image:
    """RGBA -> size x size RGBA with the alpha bounding box centred and its longer side = foreground_ratio * size."""
    foreground_ratio = check("foreground_ratio", foreground_ratio)
    alpha = np.asarray(image.getchannel("A"))
    ys, xs = np.nonzero(alpha > ALPHA_THRESHOLD)
    if len(xs) == 0:
        raise ImageError("no foreground found: the image is fully transparent or background removal left nothing. "
                         "Use an image with a clearly visible object, or turn background removal off.")
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    crop = image.crop(box)
    scale = foreground_ratio * size / max(crop.size)
    new_size = (max(1, round(crop.width * scale)), max(1, round(crop.height * scale)))
    crop = crop.resize(new_size, Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    canvas.paste(crop, ((size - new_size[0]) // 2, (size - new_size[1]) // 2))
    return canvas


def preprocess(image: ImageInput, remove_background: bool = True,
               foreground_ratio: float = InferDefaults.foreground_ratio, size: int = CANVAS_SIZE,
               remover: BackgroundRemover | None = None) -> Image.Image:
    """Any image (path, PIL, uint8 array, file bytes or object) -> square RGBA, object centred at `foreground_ratio`
    of the side.

    Background removal is skipped when the image already has a meaningful alpha channel; with
    remove_background=False an image without alpha is only recentred as a whole (fully opaque).
    Raises `ImageError` for unreadable, empty, too small, too large or fully transparent images.
    """
    image = check_visible(load_image(image))
    if not has_meaningful_alpha(image):
        image = (remover or default_remover())(image) if remove_background else image.convert("RGBA")
    return recenter(image, foreground_ratio, size)


# ----------------------------------------------------------------------------------------------------------------
# The model's input


def image_to_tensor(image: Image.Image, size: int) -> Tensor:
    """PIL image -> [1, 3, size, size] float32 in [0, 1], exactly as OpenLRM's `infer_single`.

    RGBA is composited over white (rgb * a + 1 - a), then resized with bicubic `align_corners=True` (no antialiasing;
    a non-square image is squashed, as the reference does) and clamped to [0, 1].
    """
    image = _to_rgb_or_rgba(image)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).unsqueeze(0) / 255.0  # [1, 3|4, H, W]
    if x.shape[1] == 4:
        x = x[:, :3] * x[:, 3:] + (1 - x[:, 3:])
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=True)
    return x.clamp(0, 1)
