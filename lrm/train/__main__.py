"""`python -m lrm.train`: train an LRM on procedural shapes (also under `torchrun --nproc_per_node N`)."""

from __future__ import annotations

import argparse
import json
import sys

from .trainer import PRECISIONS, PRESETS, TrainConfig, train


def main(argv: list[str] | None = None) -> int:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m lrm.train", description=__doc__)
    p.add_argument("--preset", choices=sorted(PRESETS), default=defaults.preset, help="model + data size")
    p.add_argument("--out", default=defaults.out, help="output folder (resumes when it holds trainer_state.pt)")
    p.add_argument("--objects", type=int, default=defaults.objects, help="training objects (seeds 0..N-1)")
    p.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps (schedule length)")
    p.add_argument("--minutes", type=float, default=defaults.minutes, help="stop after this wall time (0: off)")
    p.add_argument("--batch", type=int, default=defaults.batch, help="objects per step and process")
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--warmup", type=int, default=defaults.warmup)
    p.add_argument("--workers", type=int, default=defaults.workers, help="data loader processes")
    p.add_argument("--save-every-minutes", type=float, default=defaults.save_every_minutes)
    p.add_argument("--log-every", type=int, default=defaults.log_every)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--device", default=defaults.device, help='"cpu" or "cuda" (a GPU; under torchrun, one per process)')
    p.add_argument("--weights", type=json.loads, default=None, help='loss weights as JSON, e.g. {"render": 0.5}')
    p.add_argument("--precision", choices=PRECISIONS, default=defaults.precision,
                   help="bf16: forward pass under bfloat16 autocast (faster on CPUs with AMX and on GPUs)")
    p.add_argument("--model", type=json.loads, default={}, help='model config overrides as JSON (new runs only)')
    p.add_argument("--data", type=json.loads, default={}, help='data overrides as JSON, e.g. {"rays": 64}')
    args = p.parse_args(argv)
    cfg = TrainConfig(preset=args.preset, out=args.out, objects=args.objects, steps=args.steps, minutes=args.minutes,
                      batch=args.batch, lr=args.lr, warmup=args.warmup, workers=args.workers,
                      save_every_minutes=args.save_every_minutes, log_every=args.log_every, seed=args.seed,
                      device=args.device, precision=args.precision, model=args.model, data=args.data)
    if args.weights:
        cfg.weights.update(args.weights)
    out = train(cfg)
    print(f"model written to {out} (config.json + model.safetensors); load it with lrm.load_model({str(out)!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
