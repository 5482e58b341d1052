"""`python -m trainer`: one trial, no Ray, no MLflow.

    python -m trainer --dataset synthetic --arch bottleneck --width 16 --batch-size 5 \\
        --regularizer --epochs 2 [--json out.json] [--checkpoint-dir ckpt]
    python -m trainer memory [--format table|json]      # Table 5: our bytes beside the paper's
    python -m trainer memory --forecast --arch vgg16 --batch-size 16 --image-size 224 \
        [--format json|md]                               # one step's peak GPU memory, on a CPU
    python -m trainer cost --regularizer --members 18   # ops, FLOPs and GPU hours of a step
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from .config import DEFAULTS, HELP, TYPES, Config, ConfigError
from .memory import table5_rows


def config_parser(prog: str = "python -m trainer", description: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=description or "Train one trial of the paper's grid (no Ray, no MLflow) "
                                   "and print its measurements. `python -m trainer memory` "
                                   "prints Table 5 instead; `memory --forecast` a step's GPU memory.",
        epilog="Every flag is a field of trainer/config.py's Config (its help is the field's).")
    for name, kind in TYPES.items():
        flag = "--" + name.replace("_", "-")
        text = f"{HELP[name]} (default: {DEFAULTS[name]})"
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=DEFAULTS[name],
                           help=HELP[name])
        else:
            p.add_argument(flag, type=kind, default=DEFAULTS[name], help=text)
    p.add_argument("--checkpoint-dir", help="save state here each checkpoint_every epochs; "
                                            "a rerun with the same folder resumes")
    p.add_argument("--json", metavar="FILE", help="also write the measurements as JSON")
    return p


class Progress:
    """On a terminal, a bar redrawn in place; in a log file (Ray worker logs, CI), one line
    per ~10% of an epoch instead of thousands of carriage-return frames."""

    def __init__(self, epochs: int, out):
        self.epochs, self.out = epochs, out
        self.tty = out.isatty()
        self.t0 = time.perf_counter()
        self.shown = 0                        # tenths of the epoch printed so far (non-TTY)

    def __call__(self, epoch: int, step: int, steps: int) -> None:
        done = step / steps
        elapsed = time.perf_counter() - self.t0
        if self.tty:
            bar = "#" * int(30 * done) + "." * (30 - int(30 * done))
            print(f"\repoch {epoch}/{self.epochs} [{bar}] {step}/{steps} {elapsed:6.0f}s",
                  end="", file=self.out, flush=True)
        elif int(10 * done) > self.shown:
            self.shown = 0 if step == steps else int(10 * done)
            print(f"epoch {epoch}/{self.epochs}: step {step}/{steps} ({100 * done:.0f}%), "
                  f"{elapsed:.0f}s", file=self.out, flush=True)

    def line(self, text: str) -> None:
        print(("\r" + text + " " * 10) if self.tty else text, file=self.out, flush=True)


def run_trial(argv: list[str]) -> int:
    args = vars(config_parser().parse_args(argv))
    checkpoint_dir, json_path = args.pop("checkpoint_dir"), args.pop("json")
    try:
        cfg = Config.from_dict(args, source="flags")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from .train import train  # torch import after argument errors, which are instant

    print("config: " + " ".join(f"{k}={v}" for k, v in cfg.to_dict().items()), file=sys.stderr)
    history = []
    progress = Progress(cfg.epochs, sys.stderr)
    for m in train(cfg, checkpoint_dir, progress):
        if m.final:
            summary = m.metrics
            break
        history.append({"epoch": m.epoch, **m.metrics})
        shown = ", ".join(f"{k} {v:.4g}" for k, v in m.metrics.items())
        progress.line(f"epoch {m.epoch}/{cfg.epochs}: {shown}")
    print(json.dumps(summary, indent=2))
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"config": cfg.to_dict(), "history": history, "final": summary}, f, indent=2)
    return 0


def memory(argv: list[str]) -> int:
    if "--forecast" in argv:
        return forecast_memory([a for a in argv if a != "--forecast"])
    p = argparse.ArgumentParser(prog="python -m trainer memory",
                                description="Table 5: model parameter and buffer bytes, ours "
                                            "beside the paper's (10 classes, full width), and "
                                            "the same models at 224x224. With --forecast (and "
                                            "any trainer flag): one training step's peak GPU "
                                            "memory, forecast on this machine.")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument("--forecast", action="store_true", help="see above")
    rows = table5_rows()
    if p.parse_args(argv).format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<16}{'input':>8}{'params (ours)':>16}{'paper':>14}{'buffers (ours)':>16}"
          f"{'paper':>9}{'total (ours)':>15}{'paper':>14}")
    shown = lambda v, width: f"{v:>{width},}" if v is not None else f"{'-':>{width}}"  # noqa: E731
    for r in rows:
        print(f"{r['model']:<16}{r['image_size']:>5}px{shown(r['param_bytes'], 16)}"
              f"{shown(r['paper_param_bytes'], 14)}{shown(r['buffer_bytes'], 16)}"
              f"{shown(r['paper_buffer_bytes'], 9)}{shown(r['total_bytes'], 15)}"
              f"{shown(r['paper_total_bytes'], 14)}")
    print("W=16/8 differ from the paper by design (the K = 16*W reading: DESIGN.md). At "
          "224 px the 7x7x512 conv output is flattened into FC1; the paper's Table 5 is 32 px.")
    return 0


FORECAST_FIELDS = {"model_mb": "model (parameters + buffers)",
                   "peak_mb": "peak allocated (model, data on the device, and the step)",
                   "dynamic_peak_mb": "peak dynamic (peak - model - data)",
                   "forward_peak_mb": "forward-pass peak dynamic"}


def forecast_memory(argv: list[str]) -> int:
    """`memory --forecast`: the trainer's flags choose the trial; its step on CUDA, in MB."""
    p = config_parser("python -m trainer memory --forecast",
                      "Forecast one training step's peak GPU memory (MB = 2**20 bytes) for "
                      "the trial these flags describe, on this machine (no GPU needed): the "
                      "trainer's own step on fake tensors, allocations rounded as CUDA does.")
    p.add_argument("--format", choices=["json", "md"], default="md")
    args = vars(p.parse_args(argv))
    fmt = args.pop("format")
    for unused in ("checkpoint_dir", "json"):
        args.pop(unused)
    try:
        cfg = Config.from_dict(args, source="flags")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from .forecast import forecast  # torch import after argument errors

    numbers = forecast([cfg]).as_dict()
    if fmt == "json":
        print(json.dumps({"config": cfg.to_dict(), **{k: round(v, 1) for k, v in numbers.items()}}, indent=2))
        return 0
    print(f"Forecast of one training step on CUDA: {cfg.arch}"
          + (f" W={cfg.width}" if cfg.arch == "bottleneck" else "")
          + f", batch {cfg.batch_size}, {cfg.image_size}x{cfg.image_size}, regularizer "
          f"{'on' if cfg.regularizer else 'off'}, momentum {cfg.momentum}\n")
    print("| | MB |\n|---|---:|")
    for key, label in FORECAST_FIELDS.items():
        print(f"| {label} | {numbers[key]:,.0f} |")
    print("\nNot included: the CUDA context, cuDNN/cuBLAS workspaces, fragmentation.")
    return 0


def cost(argv: list[str]) -> int:
    """`cost`: a training step's (and an evaluation chunk's) ops and FLOPs, counted on fake
    tensors, and the seconds the constants of trainer/calibration.json make of them."""
    p = config_parser("python -m trainer cost",
                      "Count the ops one training step dispatches (batch, forward, backward, "
                      "optimizer) and its FLOPs (matmuls and convolutions), and one evaluation "
                      "chunk's, for the trial these flags describe, or a fused group of "
                      "--members copies (seeds 0..N-1); and the trial's forecast GPU time.")
    p.add_argument("--members", type=int, default=1, help="fused group size (default: 1)")
    args = vars(p.parse_args(argv))
    members = args.pop("members")
    for unused in ("checkpoint_dir", "json"):
        args.pop(unused)
    try:
        cfgs = [Config.from_dict({**args, "seed": args["seed"] + i}, source="flags") for i in range(members)]
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from .calibration import group_time, rates  # torch import after argument errors
    from .estimates import cost_configs

    _, c = cost_configs([cfg.to_dict() for cfg in cfgs])
    t = group_time(cfgs, c, rates("cuda"))
    print(json.dumps({**c.as_dict(), "steps": t.steps, "evaluations": t.evaluations,
                      "gpu_hours": t.hours, "constants": rates("cuda").note()}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["memory"]:
        return memory(argv[1:])
    if argv[:1] == ["cost"]:
        return cost(argv[1:])
    return run_trial(argv)


if __name__ == "__main__":
    sys.exit(main())
