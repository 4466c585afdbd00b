"""Image encoders built from an architecture description only: DINOv2 with registers (v1.1) and DINO ViT (v1.0).

No backbone weights are downloaded: the LRM checkpoint holds them. Parameter names follow the released checkpoints
(`encoder.model.*`): the DINOv2 names of facebookresearch/dinov2 and the transformers-4.x `ViTModel` names for DINO.
Both encoders take an image [N, 3, H, W] in [0, 1] and return tokens [N, L, C] (CLS first, registers dropped).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class EncoderSpec:
    family: str            # "dinov2" (v1.1 Dinov2Wrapper) or "dino" (v1.0 HF ViTModel)
    dim: int
    depth: int
    heads: int
    patch: int
    img_size: int          # size of the learned position grid: 518 for DINOv2 (37 x 37), 224 for DINO (14 x 14)
    mlp_dim: int
    registers: int = 0
    layer_scale: bool = True
    pos_antialias: bool = False
    pos_offset: float = 0.1
    stem: int = 0          # > 0: a stem of `stem` stride-2 3x3 convolutions replaces the patch-embedding conv


def _dinov2(dim: int, depth: int, heads: int, registers: int) -> EncoderSpec:
    # dinov2 hub: img_size 518, patch 14, LayerScale init 1.0, MLP ratio 4; the *_reg variants resize the position
    # grid with antialias=True and offset 0.0 (the plain ones keep DINO's 0.1 "kludge", dino#8).
    return EncoderSpec("dinov2", dim, depth, heads, patch=14, img_size=518, mlp_dim=4 * dim, registers=registers,
                       pos_antialias=registers > 0, pos_offset=0.0 if registers else 0.1)


def _dino(dim: int, depth: int, heads: int, patch: int = 16) -> EncoderSpec:
    return EncoderSpec("dino", dim, depth, heads, patch=patch, img_size=224, mlp_dim=4 * dim, layer_scale=False)


# Architecture descriptions by the `encoder_model_name` that checkpoints store. The `refcheck*` names are the tiny
# test encoders of the reference fixtures (2 blocks, 2 heads).
ENCODERS: dict[str, EncoderSpec] = {
    "dinov2_vits14": _dinov2(384, 12, 6, 0),
    "dinov2_vitb14": _dinov2(768, 12, 12, 0),
    "dinov2_vitl14": _dinov2(1024, 24, 16, 0),
    "dinov2_vits14_reg": _dinov2(384, 12, 6, 4),
    "dinov2_vitb14_reg": _dinov2(768, 12, 12, 4),
    "dinov2_vitl14_reg": _dinov2(1024, 24, 16, 4),
    "facebook/dino-vits16": _dino(384, 12, 6),
    "facebook/dino-vitb16": _dino(768, 12, 12),
    "facebook/dino-vits8": _dino(384, 12, 6, patch=8),
    "facebook/dino-vitb8": _dino(768, 12, 12, patch=8),
    "refcheck_dinov2_tiny_d48": _dinov2(48, 2, 2, 4),
    "refcheck_dinov2_tiny_d64": _dinov2(64, 2, 2, 4),
    "refcheck/dino-tiny16-d48": _dino(48, 2, 2),
    "refcheck/dino-tiny16-d64": _dino(64, 2, 2),
}


# Small encoders trained from scratch by this project: "custom-dinov2-s{img}-p{patch}-d{dim}-l{depth}-h{heads}-r{regs}"
# (DINOv2 blocks; position grid for img x img inputs), optionally "-c{n}": a convolutional stem of n stride-2 3x3
# convolutions (patch = 2^n) instead of the single patch-embedding convolution ("Early convolutions help
# transformers see better", Xiao et al. 2021: ViTs with such a stem optimise faster and more stably).
_CUSTOM = re.compile(r"custom-dinov2-s(\d+)-p(\d+)-d(\d+)-l(\d+)-h(\d+)-r(\d+)(?:-c(\d+))?")


def _custom_spec(name: str) -> EncoderSpec | None:
    match = _CUSTOM.fullmatch(name)
    if match is None:
        return None
    img, patch, dim, depth, heads, regs = map(int, match.groups()[:6])
    stem = int(match.group(7) or 0)
    if img % patch or dim % heads:
        raise ValueError(f"{name}: image size must be a multiple of the patch size and dim of the heads")
    if stem and patch != 2 ** stem:
        raise ValueError(f"{name}: a stem of {stem} stride-2 convolutions needs patch size {2 ** stem}")
    return EncoderSpec("dinov2", dim, depth, heads, patch=patch, img_size=img, mlp_dim=4 * dim, registers=regs,
                       pos_antialias=True, pos_offset=0.0, stem=stem)


def encoder_spec(encoder_type: str, model_name: str, feat_dim: int) -> EncoderSpec:
    """Look up and check the encoder of a config; raise `ValueError` saying what is supported."""
    spec = ENCODERS.get(model_name) or _custom_spec(model_name)
    if spec is None:
        raise ValueError(f"Unknown encoder_model_name {model_name!r}. Supported: {', '.join(sorted(ENCODERS))}, "
                         "or custom-dinov2-s<img>-p<patch>-d<dim>-l<depth>-h<heads>-r<registers>.")
    if spec.family != encoder_type.lower():
        raise ValueError(f"encoder_type {encoder_type!r} does not match encoder {model_name!r} ({spec.family})")
    if spec.dim != feat_dim:
        raise ValueError(f"encoder_feat_dim {feat_dim} does not match encoder {model_name!r} (dim {spec.dim})")
    return spec


def multihead_attention(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """Multi-head softmax(q kᵀ / sqrt(d)) v on [N, L, D] inputs."""
    n, lq, d = q.shape
    q = q.view(n, lq, heads, d // heads).transpose(1, 2)  # [N, h, Lq, d/h]
    k = k.view(n, k.shape[1], heads, d // heads).transpose(1, 2)
    v = v.view(n, v.shape[1], heads, d // heads).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(n, lq, d)  # [N, Lq, D]


# ----------------------------------------------------------------------------------------------------------------
# DINOv2 (facebookresearch/dinov2 models/vision_transformer.py, as vendored by OpenLRM v1.1)


class _LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU


class _Dinov2Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.proj(multihead_attention(q, k, v, self.heads))


class _Dinov2Block(nn.Module):
    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.norm1 = nn.LayerNorm(spec.dim, eps=1e-6)
        self.attn = _Dinov2Attention(spec.dim, spec.heads)
        self.ls1 = _LayerScale(spec.dim) if spec.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(spec.dim, eps=1e-6)
        self.mlp = _Mlp(spec.dim, spec.mlp_dim)
        self.ls2 = _LayerScale(spec.dim) if spec.layer_scale else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):
    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.stem = None
        if spec.stem:  # channels double per stride-2 convolution up to dim, then a 1 x 1 projection
            layers, c_in = [], 3
            for i in range(spec.stem):
                c_out = max(16, spec.dim >> (spec.stem - 1 - i))
                layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GELU()]
                c_in = c_out
            self.stem = nn.Sequential(*layers)
            self.proj = nn.Conv2d(c_in, spec.dim, kernel_size=1)
        else:
            self.proj = nn.Conv2d(3, spec.dim, kernel_size=spec.patch, stride=spec.patch)

    def forward(self, x: Tensor) -> Tensor:
        if self.stem is not None:
            x = self.stem(x)
        return self.proj(x).flatten(2).transpose(1, 2)  # [N, h*w, C]


def resize_pos_embed(pos: Tensor, spec: EncoderSpec, h: int, w: int) -> Tensor:
    """Learned position embeddings [1, 1 + g*g, C] (CLS first, then a square g x g grid) for an h x w image ->
    [1, 1 + (h/p)*(w/p), C]: the grid resized bicubically, as the released backbones do it.

    Resized by scale factor, not by size: the factor sets the sampling positions of the bicubic kernel. DINO and the
    plain DINOv2 add 0.1 to the target grid to avoid a floating point error in the output size (dino#8,
    transformers' `interpolate_pos_encoding`); DINOv2 with registers uses offset 0 and antialiasing instead.
    """
    n_pos = pos.shape[1] - 1
    if (h // spec.patch) * (w // spec.patch) == n_pos and h == w:
        return pos
    side = math.sqrt(n_pos)
    h0, w0 = h // spec.patch + spec.pos_offset, w // spec.patch + spec.pos_offset
    grid = pos[:, 1:].float().reshape(1, int(side), int(side), -1).permute(0, 3, 1, 2)  # [1, C, g, g]
    grid = F.interpolate(grid, scale_factor=(h0 / side, w0 / side), mode="bicubic", align_corners=False,
                         antialias=spec.pos_antialias)
    if grid.shape[-2:] != (int(h0), int(w0)):
        raise ValueError(f"input size {h}x{w} cannot be used with patch size {spec.patch}")
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, grid.shape[1])  # [1, h0*w0, C]
    return torch.cat([pos[:, :1].float(), grid], dim=1).to(pos.dtype)


class Dinov2ViT(nn.Module):
    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.spec = spec
        grid = spec.img_size // spec.patch
        self.patch_embed = _PatchEmbed(spec)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, spec.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, spec.dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, spec.registers, spec.dim)) if spec.registers else None
        self.blocks = nn.ModuleList(_Dinov2Block(spec) for _ in range(spec.depth))
        self.norm = nn.LayerNorm(spec.dim, eps=1e-6)

    def forward(self, image: Tensor) -> Tensor:
        n, _, h, w = image.shape
        x = self.patch_embed(image)
        x = torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1)
        x = x + resize_pos_embed(self.pos_embed, self.spec, h, w)
        if self.register_tokens is not None:
            # Registers go after CLS, after the position embedding (they have none).
            x = torch.cat([x[:, :1], self.register_tokens.expand(n, -1, -1), x[:, 1:]], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return torch.cat([x[:, :1], x[:, 1 + self.spec.registers:]], dim=1)  # [N, 1 + h*w, C]


# ----------------------------------------------------------------------------------------------------------------
# DINO ViT with the parameter names of transformers 4.x `ViTModel` (add_pooling_layer=False), as stored by v1.0.


class _Dense(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)


class _ViTSelfAttention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)


class _ViTAttention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.attention = _ViTSelfAttention(dim)
        self.output = _Dense(dim, dim)


class _ViTLayer(nn.Module):
    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.heads = spec.heads
        self.layernorm_before = nn.LayerNorm(spec.dim, eps=1e-12)
        self.attention = _ViTAttention(spec.dim)
        self.layernorm_after = nn.LayerNorm(spec.dim, eps=1e-12)
        self.intermediate = _Dense(spec.dim, spec.mlp_dim)
        self.output = _Dense(spec.mlp_dim, spec.dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.layernorm_before(x)
        sa = self.attention.attention
        h = multihead_attention(sa.query(h), sa.key(h), sa.value(h), self.heads)
        x = x + self.attention.output.dense(h)
        h = F.gelu(self.intermediate.dense(self.layernorm_after(x)))
        return x + self.output.dense(h)


class _ViTEncoder(nn.Module):
    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.layer = nn.ModuleList(_ViTLayer(spec) for _ in range(spec.depth))


class _ViTPatchEmbeddings(nn.Module):
    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.projection = nn.Conv2d(3, spec.dim, kernel_size=spec.patch, stride=spec.patch)


class _ViTEmbeddings(nn.Module):
    def __init__(self, spec: EncoderSpec):
        super().__init__()
        grid = spec.img_size // spec.patch
        self.cls_token = nn.Parameter(torch.zeros(1, 1, spec.dim))
        self.position_embeddings = nn.Parameter(torch.zeros(1, grid * grid + 1, spec.dim))
        self.patch_embeddings = _ViTPatchEmbeddings(spec)


class DinoViT(nn.Module):
    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.spec = spec
        self.embeddings = _ViTEmbeddings(spec)
        self.encoder = _ViTEncoder(spec)
        self.layernorm = nn.LayerNorm(spec.dim, eps=1e-12)

    def forward(self, image: Tensor) -> Tensor:
        n, _, h, w = image.shape
        # ViTImageProcessor of facebook/dino-vitb16 (do_rescale/do_resize off): mean = std = 0.5, not ImageNet's.
        x = (image - 0.5) / 0.5
        x = self.embeddings.patch_embeddings.projection(x).flatten(2).transpose(1, 2)  # [N, h*w, C]
        x = torch.cat([self.embeddings.cls_token.expand(n, -1, -1), x], dim=1)
        x = x + resize_pos_embed(self.embeddings.position_embeddings, self.spec, h, w)
        for layer in self.encoder.layer:
            x = layer(x)
        return self.layernorm(x)  # last_hidden_state [N, 1 + h*w, C]


class ImageEncoder(nn.Module):
    """`encoder` of the LRM: holds the backbone as `.model` so parameter names match the checkpoints."""

    def __init__(self, spec: EncoderSpec):
        super().__init__()
        self.spec = spec
        self.model = Dinov2ViT(spec) if spec.family == "dinov2" else DinoViT(spec)

    def forward(self, image: Tensor) -> Tensor:
        """image [N, 3, H, W] in [0, 1] -> tokens [N, L, C]; H and W must be multiples of the patch size."""
        if image.shape[-1] % self.spec.patch or image.shape[-2] % self.spec.patch:
            raise ValueError(f"image size {tuple(image.shape[-2:])} must be a multiple of the encoder patch size "
                             f"{self.spec.patch}")
        return self.model(image)
