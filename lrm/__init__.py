"""openlrm-demo: a small, faithful, fast re-implementation of OpenLRM (single image -> 3D) for inference.

Shape letters used throughout: N batch, M views, L tokens, D/C channels, H/W spatial, S image size, P points, R rays.

    import lrm
    model = lrm.load_model("zxhezexin/openlrm-mix-base-1.1")
    image = lrm.image_to_tensor(pil_image, model.infer_defaults.source_size)
    planes = model.forward_planes(image, lrm.source_camera())          # [1, 3, C, 64, 64]
    frames = model.render(planes, lrm.orbit_cameras(8)[None], 192)    # {"rgb": [1, 8, 3, 192, 192], ...}
"""

from .camera import get_rays, orbit_cameras, source_camera
from .config import InferDefaults, LRMConfig
from .hub import (DEMO_MODEL, RELEASED_MODELS, CheckpointError, ModelUnavailableError, convert_state_dict,
                  export_state_dict, load_model, load_model_or_demo, read_checkpoint, save_pretrained)
from .mesh import export_mesh, extract_mesh
from .model import LRM
from .pipeline import Reconstruction, reconstruct
from .preprocess import ImageError, image_to_tensor, preprocess
from .video import render_video

__all__ = [
    "LRM", "LRMConfig", "InferDefaults", "CheckpointError", "ModelUnavailableError", "RELEASED_MODELS", "DEMO_MODEL",
    "load_model", "load_model_or_demo", "read_checkpoint", "save_pretrained", "convert_state_dict", "export_state_dict",
    "image_to_tensor", "source_camera", "orbit_cameras", "get_rays",
    "preprocess", "ImageError", "extract_mesh", "export_mesh", "render_video", "reconstruct", "Reconstruction",
]
