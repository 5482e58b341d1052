"""The trainer's step against a bare PyTorch loop over the same model and batches.

    OMP_NUM_THREADS=1 python bench/bench_trainer.py --divisor 4 --batch-sizes 5,64 --steps 40
    python bench/bench_trainer.py --divisor 1 --device cuda            # on a GPU machine

Per batch size it prints milliseconds per step for
  bare     model forward, F.cross_entropy, zero_grad/backward/step over batches that were
           sliced from the same data and normalised before the clock starts;
  trainer  `trainer.train.train` for one epoch of `--steps` steps: epoch_seconds / steps
           (its per-epoch permutation, batch indexing and normalisation on the device, the
           loss bookkeeping; no augmentation, the bare loop has none);
  +aug     the same with augmentation on (what a default trial does);
  +reg     the same with the manifold regularizer (bottleneck only), and its share of a step
and the ratio trainer / bare (the target is <= 1.05 at batch 5 and 64).
Both sides use the same model (bottleneck, W=--width, conv widths / --divisor), the same
thread count and the same seed; repeats alternate bare and trainer so that a noisy
neighbour hits both, and the median of --repeats is reported after one warm-up each.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the repo

from trainer.config import Config  # noqa: E402
from trainer.data import DATA_SEED, load_data, normalize  # noqa: E402
from trainer.model import build_model  # noqa: E402
from trainer.train import resolve_device, train  # noqa: E402


def config(args, batch: int, **overrides) -> Config:
    return Config.from_dict({**dict(
        dataset="synthetic", train_samples=batch * args.steps, test_samples=batch,
        arch="bottleneck", width=args.width, vgg_width_divisor=args.divisor, batch_size=batch,
        epochs=1, augment=False, threads=args.threads, device=args.device), **overrides})


def trainer_step_seconds(cfg: Config) -> float:
    """One epoch through the real loop; its own clock covers the training steps only."""
    for m in train(cfg):
        return m.metrics["epoch_seconds"] / (cfg.train_samples // cfg.batch_size)


def bare_step_seconds(cfg: Config) -> float:
    """The textbook loop: no bookkeeping, batches made beforehand."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data = load_data(cfg.dataset, cfg.data_dir, cfg.num_classes, cfg.train_samples,
                     cfg.test_samples, device)
    model = build_model(cfg).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    order = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(DATA_SEED))
    batches = [(normalize(data.train_x[i]), data.train_y[i])
               for i in order.to(device).split(cfg.batch_size)]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for x, y in batches:
        logits, _ = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync()
    return (time.perf_counter() - t0) / len(batches)


def measure(fn, cfg: Config, repeats: int) -> list[float]:
    fn(cfg)                                             # warm-up: allocator, caches, cudnn
    return [fn(cfg) for _ in range(repeats)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--divisor", type=int, default=4, help="vgg_width_divisor (1 = the paper)")
    p.add_argument("--width", type=int, default=32, help="bottleneck W (K = 16 W)")
    p.add_argument("--batch-sizes", default="5,64", help="comma-separated")
    p.add_argument("--steps", type=int, default=40, help="steps per timed epoch")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats; the median is shown")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads, both sides")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, device {args.device}, threads {args.threads}, "
          f"cpus {os.cpu_count()}, bottleneck W={args.width}, divisor {args.divisor}, "
          f"{args.steps} steps x {args.repeats} repeats (median)")
    print(f"{'batch':>5} {'bare ms':>9} {'trainer ms':>11} {'ratio':>6} {'+aug ms':>8} "
          f"{'+reg ms':>8} {'reg share':>9}")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        cfg = config(args, batch)
        bare, trainer = [], []
        bare_step_seconds(cfg), trainer_step_seconds(cfg)              # warm-up both
        for _ in range(args.repeats):                                  # interleaved
            bare.append(bare_step_seconds(cfg))
            trainer.append(trainer_step_seconds(cfg))
        aug = measure(trainer_step_seconds, config(args, batch, augment=True), args.repeats)
        reg = measure(trainer_step_seconds, config(args, batch, regularizer=True), args.repeats)
        b, t = statistics.median(bare), statistics.median(trainer)
        a, r = statistics.median(aug), statistics.median(reg)
        print(f"{batch:>5} {1e3 * b:>9.2f} {1e3 * t:>11.2f} {t / b:>6.3f} {1e3 * a:>8.2f} "
              f"{1e3 * r:>8.2f} {(r - t) / r:>9.1%}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
