"""Camera embedder and the camera-modulated cross/self-attention transformer that turns image tokens into triplane tokens.

Parameter names follow OpenLRM v1.1 (`camera_embedder.mlp.*`, `transformer.layers.N.{norm1,cross_attn,...}`); the
attention parameters are those of `torch.nn.MultiheadAttention(bias=False)` so the released tensors load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .encoder import multihead_attention


class CameraEmbedder(nn.Module):
    """Camera [N, 16] (flattened 3x4 cam2world + fx, fy, cx, cy) -> embedding [N, Dc]; DiT's timestep-MLP shape."""

    def __init__(self, embed_dim: int, raw_dim: int = 16):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(raw_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))

    def forward(self, camera: Tensor) -> Tensor:
        return self.mlp(camera)


class ModLN(nn.Module):
    """adaLN (DiT): LayerNorm(x) * (1 + scale) + shift, with (shift, scale) = Linear(SiLU(mod)), shift first."""

    def __init__(self, dim: int, mod_dim: int, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(mod_dim, 2 * dim))

    def forward(self, x: Tensor, mod: Tensor) -> Tensor:
        shift, scale = self.mlp(mod).chunk(2, dim=-1)  # [N, D] each
        return self.norm(x) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    """Multi-head attention without biases, storing its weights like `nn.MultiheadAttention(bias=False)`.

    With equal query and key/value widths the projections are packed in `in_proj_weight` [3D, D]; otherwise
    they are separate `q_proj_weight` [D, D] and `k_proj_weight`/`v_proj_weight` [D, Dkv].
    """

    def __init__(self, dim: int, heads: int, kv_dim: int | None = None):
        super().__init__()
        kv_dim = dim if kv_dim is None else kv_dim
        self.heads = heads
        self.packed = kv_dim == dim
        if self.packed:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        else:
            self.q_proj_weight = nn.Parameter(torch.empty(dim, dim))
            self.k_proj_weight = nn.Parameter(torch.empty(dim, kv_dim))
            self.v_proj_weight = nn.Parameter(torch.empty(dim, kv_dim))
        self.out_proj = nn.Linear(dim, dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1 and not p.is_meta:
                nn.init.xavier_uniform_(p)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """x [N, L, D] attends to context [N, Lc, Dkv] (itself when None) -> [N, L, D]."""
        if self.packed:
            wq, wk, wv = self.in_proj_weight.chunk(3, dim=0)
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        context = x if context is None else context
        out = multihead_attention(F.linear(x, wq), F.linear(context, wk), F.linear(context, wv), self.heads)
        return self.out_proj(out)


class ConditionModulationBlock(nn.Module):
    """x += CrossAttn(ModLN1(x), f); x += SelfAttn(ModLN2(x)); x += MLP(ModLN3(x)). Image features enter un-normalised."""

    def __init__(self, dim: int, cond_dim: int, mod_dim: int, heads: int, eps: float = 1e-6, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = ModLN(dim, mod_dim, eps)
        self.cross_attn = Attention(dim, heads, kv_dim=cond_dim)
        self.norm2 = ModLN(dim, mod_dim, eps)
        self.self_attn = Attention(dim, heads)
        self.norm3 = ModLN(dim, mod_dim, eps)
        # Indices 0 and 3 as in the reference's Sequential(Linear, GELU, Dropout, Linear, Dropout) (dropouts are 0).
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Identity(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, cond: Tensor, mod: Tensor) -> Tensor:
        x = x + self.cross_attn(self.norm1(x, mod), cond)
        x = x + self.self_attn(self.norm2(x, mod))
        return x + self.mlp(self.norm3(x, mod))


class TriplaneTransformer(nn.Module):
    """Triplane tokens [N, 3*h*w, D] x image tokens [N, L, C] x camera embedding [N, Dc] -> tokens [N, 3*h*w, D]."""

    def __init__(self, dim: int, layers: int, heads: int, cond_dim: int, mod_dim: int, eps: float = 1e-6):
        super().__init__()
        self.layers = nn.ModuleList(ConditionModulationBlock(dim, cond_dim, mod_dim, heads, eps) for _ in range(layers))
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor, cond: Tensor, mod: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x, cond, mod)
        return self.norm(x)
