"""Training of the LRM on procedural shapes: losses, the loop, resumable checkpoints, DDP (torchrun) support.

Losses: occupancy BCE at sampled points on (raw density - 3.95), whose zero is density 3.0 (the mesh threshold of the
released models: softplus(3.95 - 1) = 3.0); the raw density regressed to a steep ramp of the signed distance (opaque
inside, empty outside, for videos); colour MSE near and inside the surface; rendered-ray MSE with the model's own
volume renderer; triplane TV.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from ..config import LRMConfig
from ..checkpoint import model_from_checkpoint, read_checkpoint, save_pretrained
from ..model import LRM
from ..renderer import RayBundle, render_rays, view_ray_limits
from .data import FOREGROUND_RATIO, DataSpec, ShapeDataset, build_image_cache

OCCUPANCY_OFFSET = 3.95  # softplus(3.95 - 1) = 3.0
DENSITY_SLOPE = 500.0    # raw density per unit of signed distance in the density target
PRECISIONS = ("fp32", "bf16")  # training arithmetic: bf16 runs the forward pass under autocast
PRESETS: dict[str, dict] = {
    # The offline demo model (models/lrm-demo-shapes): 1.9 M parameters, 7.8 MB.
    "demo": dict(
        model=dict(camera_embed_dim=64, rendering_samples_per_ray=48, transformer_dim=128, transformer_layers=3,
                   transformer_heads=4, triplane_low_res=16, triplane_high_res=32, triplane_dim=32,
                   encoder_type="dinov2", encoder_model_name="custom-dinov2-s128-p8-d128-l4-h4-r0",
                   encoder_feat_dim=128, encoder_freeze=False, triplane_lift=True, triplane_lift_rgb=True),
        data=dict(image_size=128),
        infer=dict(source_size=128, render_size=192, mesh_size=256, foreground_ratio=FOREGROUND_RATIO)),
    # A few-second model for tests and smoke runs.
    "tiny": dict(
        model=dict(camera_embed_dim=16, rendering_samples_per_ray=16, transformer_dim=32, transformer_layers=1,
                   transformer_heads=2, triplane_low_res=8, triplane_high_res=16, triplane_dim=8,
                   encoder_type="dinov2", encoder_model_name="custom-dinov2-s64-p16-d32-l1-h2-r0",
                   encoder_feat_dim=32, encoder_freeze=False, triplane_lift=True, triplane_lift_rgb=True,
                   density_scale=10.0),
        data=dict(image_size=64, uniform_points=256, surface_points=256, rays=32),
        infer=dict(source_size=64, render_size=64, mesh_size=64, foreground_ratio=FOREGROUND_RATIO)),
}


@dataclass
class TrainConfig:
    preset: str = "demo"
    out: str = "runs/demo"
    objects: int = 4000            # training objects (seeds 0 .. objects - 1)
    steps: int = 3300              # length of the learning-rate schedule (the demo model's recipe: ~47 min here)
    minutes: float = 60.0          # stop after this much wall time anyway (0: run all steps)
    batch: int = 8                 # per process
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 300
    grad_clip: float = 1.0
    workers: int = 1               # data loader processes
    log_every: int = 20
    save_every_minutes: float = 5.0
    seed: int = 0
    device: str = "cpu"            # "cuda" trains on the GPU (under torchrun: the process's local GPU)
    precision: str = "fp32"        # "bf16": the forward pass under bfloat16 autocast (weights and optimizer stay fp32)
    model: dict = field(default_factory=dict)  # overrides of the preset's model config (a new run only)
    data: dict = field(default_factory=dict)   # overrides of the preset's DataSpec
    weights: dict = field(default_factory=lambda: dict(occupancy=1.0, color=1.5, density=1.0, render=1.0, tv=1e-3))


def triplane_tv(planes: Tensor) -> Tensor:
    return (planes[..., 1:, :] - planes[..., :-1, :]).abs().mean() + (planes[..., 1:] - planes[..., :-1]).abs().mean()


class TrainStep(nn.Module):
    """The whole training computation in `forward`, so DistributedDataParallel can wrap it."""

    def __init__(self, model: LRM, weights: dict):
        super().__init__()
        self.model, self.weights = model, weights

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        model = self.model
        planes = model.forward_planes(batch["image"], batch["camera"])  # [N, 3, C, H, W]
        raw, rgb = model.synthesizer(planes, batch["xyz"])  # [N, P, 1], [N, P, 3]
        raw, rgb, sdf = raw[..., 0].float(), rgb.float(), batch["sdf"]  # losses in fp32, also under autocast
        inside = (sdf < 0).float()
        losses = {"occupancy": F.binary_cross_entropy_with_logits(raw - OCCUPANCY_OFFSET, inside)}
        # colour where it is seen: near the surface (weight 1.5) and inside
        near = sdf.abs() < 0.05
        w_color = torch.where(near, 1.5, torch.where(sdf < 0, 1.0, 0.0))
        losses["color"] = (w_color.unsqueeze(-1) * (rgb - batch["color"]) ** 2).sum() / (3 * w_color.sum() + 1e-6)
        # raw density regressed to a steep ramp of the signed distance: opaque inside (density ~60), empty outside,
        # density 3.0 exactly on the surface; BCE alone leaves the density hovering just above the threshold.
        target = (OCCUPANCY_OFFSET - sdf * DENSITY_SLOPE).clamp(-8.0, 60.0)
        losses["density"] = F.smooth_l1_loss((raw - target) / 10, torch.zeros_like(raw))
        losses["tv"] = triplane_tv(planes.float())
        if self.weights.get("render", 0.0):
            losses["render"] = self.render_loss(planes, batch)
        losses["total"] = sum(self.weights[k] * v for k, v in losses.items())
        return losses

    def render_loss(self, planes: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """MSE of rays rendered with the model's own (stochastic) renderer against the true colours."""
        model = self.model
        n_coarse = n_fine = model.config.rendering_samples_per_ray // 2
        errors = []
        for b in range(planes.shape[0]):
            o, d = batch["ray_o"][b], batch["ray_d"][b]
            near_t, far_t = view_ray_limits(o, d)
            rays = RayBundle(o, d, near_t, far_t, torch.rand(o.shape[0], n_coarse, device=o.device),
                             torch.rand(o.shape[0], n_fine, device=o.device))
            pred, _, _, _ = render_rays(model.synthesizer, planes[b:b + 1], rays, n_coarse, n_fine)
            errors.append(((pred.float() - batch["ray_rgb"][b]) ** 2).mean())
        return torch.stack(errors).mean()


def init_weights(model: LRM) -> None:
    """Initialisation for training from scratch: ViT-style truncated normal in the encoder and transformer; Kaiming
    in the ReLU decoder, so its output can reach the large densities of an opaque surface quickly."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.startswith(("encoder", "transformer")):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    nn.init.trunc_normal_(model.encoder.model.pos_embed, std=0.02)
    layers = [m for m in model.synthesizer.decoder.net if isinstance(m, nn.Linear)]
    for layer in layers[:-1]:
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    nn.init.normal_(layers[-1].weight, std=0.01)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "pos_embed" not in name and "token" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def _distributed(device: torch.device) -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def training_device(name: str) -> torch.device:
    """The device to train on; under torchrun each process takes the GPU of its LOCAL_RANK."""
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for but PyTorch sees no CUDA GPU; train with --device cpu")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return device


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) into cfg.out; returns the folder holding config.json + model.safetensors."""
    device = training_device(cfg.device)
    rank, world = _distributed(device)
    preset = PRESETS[cfg.preset]
    out = Path(cfg.out)
    for what, given, known in (("--data", cfg.data, DataSpec.__dataclass_fields__),
                               ("--model", cfg.model, LRMConfig.__dataclass_fields__)):
        if unknown := sorted(set(given) - set(known)):
            raise ValueError(f"{what}: unknown keys {unknown}; known: {', '.join(sorted(known))}")
    spec = DataSpec(**(preset["data"] | cfg.data))
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {cfg.precision!r}")
    torch.manual_seed(cfg.seed + rank)

    state_path = out / "trainer_state.pt"
    if state_path.exists():  # resume: weights from the release-format checkpoint, the rest from trainer_state.pt
        model = model_from_checkpoint(read_checkpoint(out)).requires_grad_(True)
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    else:
        model = LRM(LRMConfig.from_dict(preset["model"] | cfg.model))
        init_weights(model)
        state = None
    model.to(device).train()
    step_module = TrainStep(model, cfg.weights)
    wrapped = step_module
    if world > 1:
        ids = [device] if device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(step_module, device_ids=ids)

    seeds = list(range(cfg.objects))
    cache = out / f"views-{cfg.objects}-{spec.image_size}.npy"  # ("inputs-*": the earlier, recentred protocol)
    if rank == 0:
        images, placements = build_image_cache(seeds, spec, cache, workers=max(2, min(16, os.cpu_count() or 2)))
    if world > 1:
        dist.barrier()
    if rank != 0:  # the other processes read what rank 0 wrote
        images, placements = build_image_cache(seeds, spec, cache)
    dataset = ShapeDataset(seeds, images, spec, seed=cfg.seed + 1000 * rank, placements=placements)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True)
    loader = DataLoader(dataset, batch_size=cfg.batch, sampler=sampler, num_workers=cfg.workers, drop_last=True,
                        persistent_workers=cfg.workers > 0, pin_memory=device.type == "cuda",
                        worker_init_fn=lambda _: torch.set_num_threads(1))

    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.warmup, cfg.steps))
    step, elapsed, epoch = 0, 0.0, 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, elapsed, epoch = state["step"], state["elapsed"], state["epoch"]

    def save(tag: str | None = None) -> None:
        if rank != 0:
            return
        target = out if tag is None else out / "checkpoints" / tag
        save_pretrained(model, target, infer=preset["infer"])
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                    "elapsed": elapsed, "epoch": epoch, "train_config": asdict(cfg)}, target / "trainer_state.pt")

    from tqdm.auto import tqdm
    bar = tqdm(total=cfg.steps, initial=step, disable=rank != 0, dynamic_ncols=True, desc="train")
    log = None
    if rank == 0:  # on resume, drop the log rows of steps after the checkpoint (they are about to be redone)
        log_path = out / "train_log.jsonl"
        rows = log_path.read_text().splitlines() if log_path.exists() else []
        log_path.write_text("".join(r + "\n" for r in rows if json.loads(r)["step"] <= step))
        log = open(log_path, "a")
    started, last_save = time.perf_counter() - elapsed, elapsed
    done = False
    while not done:
        sampler.set_epoch(epoch)
        for batch in loader:
            with torch.autocast(device.type, torch.bfloat16, enabled=cfg.precision == "bf16"):
                losses = wrapped({k: v.to(device, non_blocking=True) for k, v in batch.items()})
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            elapsed = time.perf_counter() - started
            if rank == 0:
                bar.update(1)
                if step % cfg.log_every == 0 or step == 1:
                    row = {"step": step, "minutes": round(elapsed / 60, 3), "lr": scheduler.get_last_lr()[0],
                           "grad_norm": float(grad_norm), **{k: round(v.item(), 5) for k, v in losses.items()}}
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    bar.set_postfix(loss=f"{row['total']:.4f}", occ=f"{row['occupancy']:.3f}",
                                    render=f"{row.get('render', 0.0):.4f}")
                if cfg.save_every_minutes and elapsed - last_save >= cfg.save_every_minutes * 60:
                    last_save = elapsed
                    save(f"step-{step:06d}")
                    save()
            if step >= cfg.steps or (cfg.minutes and elapsed >= cfg.minutes * 60):
                done = True
                break
        epoch += 1
    bar.close()
    save()
    if log:
        log.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return out
