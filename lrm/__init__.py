"""openlrm-demo: a small, faithful, fast re-implementation of OpenLRM (single image -> 3D) for inference.

Shape letters used throughout, in square brackets: N batch, M views, L tokens, D/C channels, H/W height and width
(of an image, a plane or a frame), P points, R rays, S samples per ray, G grid vertices per side, V vertices.

    import lrm
    model = lrm.load_model("zxhezexin/openlrm-mix-base-1.1")
    image = lrm.image_to_tensor(pil_image, model.infer_defaults.source_size)
    planes = model.forward_planes(image, lrm.source_camera())          # [1, 3, C, 64, 64]
    field = lrm.FastField(model, planes)                                # or lrm.ReferenceField: OpenLRM's algorithms
    mesh = lrm.extract_mesh(field, 384)                                 # trimesh.Trimesh, z up
    frames = field.render(lrm.orbit_cameras(8), 192)                    # {"rgb": [8, 3, 192, 192], ...}
"""

from .camera import get_rays, orbit_cameras, source_camera
from .catalog import Catalog, ModelCache
from .checkpoint import CheckpointError, convert_state_dict, export_state_dict, read_checkpoint, save_pretrained
from .config import InferDefaults, LRMConfig
from .fast import FastField
from .field import Field, ReferenceField
from .hub import (DEFAULT_MODEL, DEMO_MODEL, RELEASED_MODELS, ModelChoice, ModelUnavailableError, choose_model,
                  is_available, load_model, load_model_or_demo, model_defaults)
from .mesh import bundle_obj, export_mesh, extract_mesh
from .model import LRM
from .options import MESH_FORMATS, MODES, PRECISIONS, JobOptions, Mode, Precision
from .pipeline import STAGES, Reconstruction, reconstruct, reconstruct_steps
from .preprocess import BackgroundRemover, ImageError, default_remover, image_to_tensor, preprocess
from .video import render_video

__all__ = [
    "LRM", "LRMConfig", "InferDefaults", "CheckpointError", "ModelUnavailableError", "RELEASED_MODELS", "DEMO_MODEL",
    "DEFAULT_MODEL", "load_model", "load_model_or_demo", "choose_model", "ModelChoice", "is_available",
    "model_defaults", "read_checkpoint", "save_pretrained", "convert_state_dict", "export_state_dict", "Catalog",
    "ModelCache", "image_to_tensor", "source_camera", "orbit_cameras", "get_rays", "preprocess", "ImageError",
    "BackgroundRemover", "default_remover",
    "Field", "FastField", "ReferenceField", "extract_mesh", "export_mesh", "bundle_obj", "MESH_FORMATS",
    "render_video", "JobOptions", "Mode", "MODES", "Precision", "PRECISIONS", "STAGES", "reconstruct",
    "reconstruct_steps", "Reconstruction",
]
