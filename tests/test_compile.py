"""`compile: default` (torch.compile of the forward and objective; AOT autograd compiles
their backward) trains a fused group exactly as eager does: float64, 3 steps from the same
state, compared as tests/test_fused.py compares fused with solo (training this small is
chaotic, so never over long runs). Slow: inductor compiles the graph on the CPU (~1-2 min)."""
from __future__ import annotations

import pytest
import torch

from trainer.config import Config
from trainer.group import Group
from trainer.model import build_model
from trainer.train import Member

from test_fused import worst_relative

pytestmark = pytest.mark.slow

MEMBERS = [dict(seed=0, regularizer=True), dict(seed=1, regularizer=False)]


def group(compile_mode: str) -> Group:
    cfgs = [Config.from_dict(dict(dataset="synthetic", vgg_width_divisor=64, width=2, batch_size=5,
                                  device="cpu", dtype="float64", momentum=0.9, threads=1,
                                  compile=compile_mode, **m)) for m in MEMBERS]
    return Group([Member(i, c, None, generator=torch.Generator()) for i, c in enumerate(cfgs)],
                 [build_model(c) for c in cfgs], [{} for _ in cfgs])


def test_a_compiled_fused_step_matches_eager_over_three_steps():
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(3, len(MEMBERS), 5, 3, 32, 32, generator=g, dtype=torch.float64)
    ys = torch.randint(0, 10, (3, len(MEMBERS), 5), generator=g)
    eager, compiled = group("off"), group("default")
    assert compiled.losses is not eager.losses and hasattr(compiled.losses, "_torchdynamo_orig_callable")
    eager_losses = torch.stack([eager.step(x, y) for x, y in zip(xs, ys)])
    compiled_losses = torch.stack([compiled.step(x, y) for x, y in zip(xs, ys)])
    assert compiled_losses[0].tolist() == pytest.approx(eager_losses[0].tolist(), rel=1e-9)
    assert compiled_losses.flatten().tolist() == pytest.approx(eager_losses.flatten().tolist(), rel=1e-6)
    for i in range(len(MEMBERS)):
        assert worst_relative(compiled.member_state(i)[0], eager.member_state(i)[0]) < 1e-6, MEMBERS[i]
