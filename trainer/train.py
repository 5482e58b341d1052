"""The training loop: one trial, from a Config to per-epoch measurements and checkpoints.

    for m in train(cfg, checkpoint_dir="ckpt"):   # resumes from ckpt/checkpoint.pt if there
        print(m.epoch, m.metrics)

Knows nothing of Ray, MLflow or YAML: callers decide where measurements go.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from .config import RESUMABLE, Config
from .data import Data, load_data, normalize, steps_per_epoch, train_batches
from .manifold import local_loss, local_terms
from .memory import MemoryTimeline, cuda_peak_metrics, forward_peak_mb, model_bytes
from .model import build_model

CHECKPOINT = "checkpoint.pt"
CHECK_EVERY = 100     # steps between loss checks: one host sync per 100 steps on CUDA
EVAL_BATCH = 1000     # images per forward pass when measuring accuracy (eval mode)


class NonFiniteLoss(FloatingPointError):
    pass


class ResumeMismatch(ValueError):
    pass


@dataclass
class Measurement:
    epoch: int                         # 1-based; the final summary repeats the last epoch
    metrics: dict                      # name -> float (accuracies and gaps in %)
    checkpoint: Path | None = None     # written this epoch (the whole state), else None
    artifacts: dict = field(default_factory=dict)   # name.json -> JSON-able dict
    final: bool = False


def available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but torch sees no CUDA device; use device=auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def train(cfg: Config, checkpoint_dir: str | os.PathLike | None = None,
          progress: Callable[[int, int, int], None] | None = None) -> Iterator[Measurement]:
    """Run (or resume) one trial; yield a Measurement per epoch, then a final one.
    `progress(epoch, step, steps_per_epoch)` is called about 100 times an epoch."""
    cfg.validate()
    device = resolve_device(cfg.device)
    # More OpenMP threads than free cores makes a CPU step 10-100x slower: match them.
    torch.set_num_threads(cfg.threads or available_cpus())
    torch.backends.cudnn.benchmark = device.type == "cuda"
    torch.manual_seed(cfg.seed)
    data = load_data(cfg.dataset, cfg.data_dir, cfg.num_classes, cfg.train_samples,
                     cfg.test_samples, device)
    model = build_model(cfg).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)      # data order + augmentation
    terms = local_terms(len(model.head.blocks), cfg.reg_pairs, cfg.alpha_first,
                        cfg.alpha_second) if cfg.regularizer else []
    param_bytes, buffer_bytes = model_bytes(model)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    start = load_checkpoint(ckpt_dir, cfg, model, opt, gen, device) if ckpt_dir else 0
    steps = steps_per_epoch(data, cfg.batch_size)
    if steps == 0:
        raise ValueError(f"{len(data.train_y)} training samples make no batch of {cfg.batch_size}")

    metrics = {}
    for epoch in range(start + 1, cfg.epochs + 1):
        timeline = None
        if cfg.memory_timeline and epoch == 1 and device.type == "cuda":
            timeline = MemoryTimeline(model, lambda: torch.cuda.memory_allocated(device),
                                      cfg.timeline_steps)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        model.train()
        t0 = time.perf_counter()
        loss_sum, pending = 0.0, []
        for step, (x, y) in enumerate(train_batches(data, cfg.batch_size, gen, cfg.augment)):
            logits, feats = model(x)                      # (B, classes), [(B, 512), (B, 16W), ...]
            ce = F.cross_entropy(logits, y)
            L_u = [t.alpha * local_loss(model.head.blocks, feats, t, cfg.reg_lambda) for t in terms]
            loss = ce + sum(L_u)                          # Eq. 1 + Eq. 3
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if timeline:
                timeline.end_step()
            pending.append(loss.detach())
            if len(pending) == CHECK_EVERY or step == steps - 1:
                loss_sum += _check_finite(pending, epoch, step)
                pending = []
                if progress:
                    progress(epoch, step + 1, steps)
            elif progress and (step + 1) % max(1, steps // 100) == 0:
                progress(epoch, step + 1, steps)
        metrics = {"train_loss": loss_sum / steps, "epoch_seconds": time.perf_counter() - t0}
        if device.type == "cuda":
            metrics.update(cuda_peak_metrics(device, param_bytes + buffer_bytes))
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            train_acc, test_acc = accuracy(model, data.train_x, data.train_y), \
                accuracy(model, data.test_x, data.test_y)
            metrics.update(train_accuracy=train_acc, test_accuracy=test_acc,
                           generalization_gap=train_acc - test_acc)
        saved = None
        if ckpt_dir and (epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs):
            saved = save_checkpoint(ckpt_dir, cfg, model, opt, gen, epoch)
        artifacts = {}
        if timeline:
            artifacts["memory_timeline.json"] = _timeline_artifact(timeline, cfg)
            metrics["forward_peak_memory_mb"] = forward_peak_mb(
                artifacts["memory_timeline.json"], param_bytes + buffer_bytes)
        yield Measurement(epoch, metrics, saved, artifacts)

    final = {"model_param_bytes": param_bytes, "model_buffer_bytes": buffer_bytes}
    artifacts = {}
    if cfg.representation_analysis:
        artifacts["representation_analysis.json"] = analyze(model, data, cfg)
    yield Measurement(cfg.epochs, {**metrics, **final}, None, artifacts, final=True)


def _check_finite(losses: list[torch.Tensor], epoch: int, last_step: int) -> float:
    """Sum of the losses; raises naming the first non-finite step (0-based, in the epoch)."""
    window = torch.stack(losses)
    finite = torch.isfinite(window)
    if not bool(finite.all()):
        first = last_step - len(losses) + 1 + int((~finite).nonzero()[0])
        raise NonFiniteLoss(f"loss is {window[~finite][0].item()} at epoch {epoch}, step {first}: "
                            f"lower lr or alpha_*, or check the data")
    return float(window.sum())


@torch.no_grad()
def accuracy(model, x_uint8: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in %, eval mode (BatchNorm running stats, no dropout, no augmentation)."""
    model.eval()
    correct = 0
    for i in range(0, len(y), EVAL_BATCH):
        logits, _ = model(normalize(x_uint8[i:i + EVAL_BATCH]))
        correct += int((logits.argmax(1) == y[i:i + EVAL_BATCH]).sum())
    model.train()
    return 100.0 * correct / len(y)


@torch.no_grad()
def analyze(model, data: Data, cfg: Config) -> dict:
    """Figures 4-5: t-SNE + LDA of cat (3) and dog (5) activations at every head layer."""
    from .analysis import representation_analysis  # scikit-learn: only when asked for

    model.eval()
    out = {}
    for split, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
        idx = torch.cat([(y == c).nonzero()[:cfg.analysis_samples, 0] for c in (3, 5)])
        feats = [torch.cat(f) for f in zip(*(model(normalize(x[chunk]))[1]
                                           for chunk in idx.split(EVAL_BATCH)))]
        names = ["conv"] + [f"FC{k}" for k in range(1, len(feats))]
        acts = {n: f.float().cpu().numpy() for n, f in zip(names, feats)}
        out[split] = representation_analysis(acts, y[idx].cpu().numpy(), seed=cfg.seed)
    model.train()
    return out


def _timeline_artifact(timeline: MemoryTimeline, cfg: Config) -> dict:
    return {**timeline.close(), "batch_size": cfg.batch_size, "arch": cfg.arch, "width": cfg.width}


def save_checkpoint(ckpt_dir: Path, cfg, model, opt, gen, epoch: int) -> Path:
    """The whole state, written atomically: a crash mid-write leaves the previous one."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state = {"epoch": epoch, "config": cfg.to_dict(), "model": model.state_dict(),
             "optimizer": opt.state_dict(), "generator": gen.get_state(),
             "torch_rng": torch.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    path, tmp = ckpt_dir / CHECKPOINT, ckpt_dir / (CHECKPOINT + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(ckpt_dir: Path, cfg, model, opt, gen, device) -> int:
    """Restore the state in ckpt_dir if there is one; returns the epoch it reached (0 if none)."""
    path = ckpt_dir / CHECKPOINT
    if not path.is_file():
        return 0
    state = torch.load(path, map_location=device, weights_only=False)
    old, new = state["config"], cfg.to_dict()
    changed = {k for k in new if old.get(k) != new[k]} - RESUMABLE
    if changed:
        raise ResumeMismatch(f"{path} was written by a different config ({sorted(changed)} differ); "
                             f"use a new checkpoint folder for a new config")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["epoch"]
