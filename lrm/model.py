"""The LRM: image encoder + camera embedding + triplane transformer + upsampler -> planes; triplane field -> pictures.

Attribute names are the OpenLRM v1.1 state-dict names, so a v1.1 `model.safetensors` loads as it is.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from .camera import get_rays
from .config import InferDefaults, LRMConfig, infer_defaults_for
from .encoder import ImageEncoder, encoder_spec
from .lift import ColorLift, TriplaneLift
from .options import Precision, check
from .renderer import RayBundle, TriplaneField, density_activation, random_draws, render_rays, view_ray_limits
from .transformer import CameraEmbedder, TriplaneTransformer

# Points per decoder call and samples per render chunk: bounds peak memory (about 1.5 KB per sample for C = 80).
POINT_CHUNK = 2 ** 20
RENDER_CHUNK = 2 ** 18


AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # precision -> autocast dtype
# CPU instructions that make autocast pay (any of them; Linux's /proc/cpuinfo names): AMX tiles or AVX-512's bf16 / fp16
CPU_FLAGS = {"bf16": ("amx_bf16", "avx512_bf16"), "fp16": ("amx_fp16", "avx512_fp16")}


@functools.lru_cache(maxsize=None)
def cpu_has(precision: str) -> bool:
    """Whether this CPU has matrix instructions for `precision` (read from /proc/cpuinfo; False where unreadable)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & set(CPU_FLAGS.get(precision, ())))


class LRM(nn.Module):
    def __init__(self, config: LRMConfig, infer_defaults: InferDefaults | None = None):
        super().__init__()
        self.config = config
        self.infer_defaults = infer_defaults or infer_defaults_for(config)
        d = config.transformer_dim
        self.encoder = ImageEncoder(encoder_spec(config.encoder_type, config.encoder_model_name,
                                                 config.encoder_feat_dim))
        self.camera_embedder = CameraEmbedder(config.camera_embed_dim)
        # Learned triplane tokens: token = plane * low_res² + row * low_res + col; init N(0, 1/D) as the reference.
        self.pos_embed = nn.Parameter(torch.randn(1, 3 * config.triplane_low_res ** 2, d) * d ** -0.5)
        self.transformer = TriplaneTransformer(d, config.transformer_layers, config.transformer_heads,
                                               cond_dim=config.encoder_feat_dim, mod_dim=config.camera_embed_dim)
        self.upsampler = nn.ConvTranspose2d(d, config.triplane_dim, kernel_size=2, stride=2)
        self.synthesizer = TriplaneField(config.triplane_dim, config.density_scale, config.density_shift)
        if config.triplane_lift:  # project extension; absent from (and not loaded for) released checkpoints
            self.lift = TriplaneLift(config.encoder_feat_dim, d, config.triplane_low_res)
        if config.triplane_lift_rgb:
            self.lift_rgb = ColorLift(config.triplane_dim, 2 * config.triplane_low_res)

    @property
    def device(self) -> torch.device:
        return self.pos_embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pos_embed.dtype

    def forward_planes(self, image: Tensor, camera: Tensor, precision: Precision = "fp32") -> Tensor:
        """image [N, 3, H, W] in [0, 1] and conditioning camera [N, 16] -> planes [N, 3, C, 2h, 2w].

        precision="bf16" / "fp16" runs the encoder and transformer under autocast (tensor cores on a GPU, AMX on recent
        x86 CPUs); the planes come back in the model's dtype. "fp32" (default) is the reference's arithmetic.
        """
        precision = check("precision", precision)
        if precision != "fp32" and self.device.type == "cpu" and not cpu_has(precision):
            warnings.warn(f"precision {precision} runs in fp32: this CPU has no {precision} matrix instructions "
                          f"({' or '.join(CPU_FLAGS[precision])}), where autocast makes the planes slower, not faster "
                          "(measured: bf16 2.5x slower on an AVX-512 CPU without them).", RuntimeWarning, stacklevel=2)
            precision = "fp32"
        if AUTOCAST[precision] is None:
            return self._forward_planes(image, camera)
        with torch.autocast(self.device.type, dtype=AUTOCAST[precision]):
            return self._forward_planes(image, camera).to(self.dtype)

    def _forward_planes(self, image: Tensor, camera: Tensor) -> Tensor:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be [N, 3, H, W], got {tuple(image.shape)}")
        if camera.shape != (image.shape[0], 16):
            raise ValueError(f"camera must be [N, 16] with N = {image.shape[0]}, got {tuple(camera.shape)}")
        image = image.to(self.device, self.dtype)
        camera = camera.to(self.device, self.dtype)
        feats = self.encoder(image)  # [N, L, C_enc]
        mod = self.camera_embedder(camera)  # [N, Dc]
        n = image.shape[0]
        tokens = self.pos_embed.expand(n, -1, -1)  # [N, 3*h*w, D]
        if self.config.triplane_lift:
            tokens = tokens + self.lift(feats, camera)
        tokens = self.transformer(tokens, feats, mod)  # [N, 3*h*w, D]
        h = w = self.config.triplane_low_res
        x = tokens.view(n, 3, h, w, -1).permute(0, 1, 4, 2, 3).reshape(n * 3, -1, h, w)  # [N*3, D, h, w]
        x = self.upsampler(x)  # [N*3, C, 2h, 2w]
        planes = x.view(n, 3, *x.shape[1:])  # [N, 3, C, 2h, 2w]
        if self.config.triplane_lift_rgb:
            planes = planes + self.lift_rgb(image, camera)
        return planes

    def query_points(self, planes: Tensor, xyz: Tensor, chunk: int = POINT_CHUNK) -> tuple[Tensor, Tensor]:
        """Field at points xyz [N, P, 3] -> (activated density sigma [N, P, 1], rgb [N, P, 3]), in point chunks."""
        if xyz.shape[1] == 0:  # e.g. the vertices of an empty mesh
            empty = planes.new_zeros(xyz.shape[0], 0, 1)
            return empty, planes.new_zeros(xyz.shape[0], 0, 3)
        sigmas, rgbs = [], []
        for start in range(0, xyz.shape[1], chunk):
            sigma, rgb = self.synthesizer(planes, xyz[:, start:start + chunk].to(planes))
            sigmas.append(density_activation(sigma))
            rgbs.append(rgb)
        return torch.cat(sigmas, 1), torch.cat(rgbs, 1)

    def render(self, planes: Tensor, cameras: Tensor, size: int, deterministic: bool = True, *,
               samples_per_ray: int | None = None, background: float = 1.0, generator: torch.Generator | None = None,
               chunk: int = RENDER_CHUNK, progress: Callable[[int, int], None] | None = None) -> dict[str, Tensor]:
        """Volume-render planes [N, 3, C, H, W] from render cameras [N, M, 25] at size x size, as OpenLRM does.

        deterministic=True (default) is RNG-free: no stratified jitter, evenly spaced importance samples.
        deterministic=False is the reference's stochastic sampler, drawing from `generator` (else torch's global
        RNG) in the reference's order, one view at a time. Every sample is a decoder pass; `lrm.FastField` renders
        the same pictures faster.
        Returns rgb [N, M, 3, H, W], depth [N, M, 1, H, W], weight [N, M, 1, H, W] (opacity).
        `progress(done, total)` is called after each view.
        """
        n, m = cameras.shape[:2]
        if planes.shape[0] != n:
            raise ValueError(f"planes ({planes.shape[0]}) and cameras ({n}) have different batch sizes")
        samples = samples_per_ray or self.config.rendering_samples_per_ray
        n_coarse, n_fine = samples // 2, samples // 2
        rays_per_chunk = max(1, chunk // samples)
        rgb_out = torch.empty(n, m, 3, size * size, dtype=planes.dtype, device=planes.device)
        depth_out = torch.empty(n, m, 1, size * size, dtype=planes.dtype, device=planes.device)
        weight_out = torch.empty_like(depth_out)
        for i in range(n):
            origins, dirs = get_rays(cameras[i].to(planes.device, torch.float32), size)
            for j in range(m):
                near, far = view_ray_limits(origins[j], dirs[j])
                rays = RayBundle(origins[j], dirs[j], near, far)
                if not deterministic:
                    rays.jitter, rays.u = random_draws(near.shape[0], n_coarse, n_fine, generator, near.device)
                lo, hi = float("inf"), float("-inf")
                for start in range(0, near.shape[0], rays_per_chunk):
                    part = rays.chunk(start, start + rays_per_chunk)
                    rgb, depth, weight, depths = render_rays(self.synthesizer, planes[i:i + 1], part,
                                                             n_coarse, n_fine, background)
                    stop = start + part.near.shape[0]
                    rgb_out[i, j, :, start:stop] = rgb.T
                    depth_out[i, j, :, start:stop] = depth.T
                    weight_out[i, j, :, start:stop] = weight.T
                    lo, hi = min(lo, depths.min().item()), max(hi, depths.max().item())
                # The reference clamps depth to the range of all sample depths of the call (one view here).
                depth_out[i, j].clamp_(lo, hi)
                if progress is not None:
                    progress(i * m + j + 1, n * m)
        shape = (n, m, -1, size, size)
        return {"rgb": rgb_out.view(shape), "depth": depth_out.view(shape), "weight": weight_out.view(shape)}
