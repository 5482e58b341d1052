"""Models: Table 5's bytes, the bottleneck widths, the forward contract (logits, feats)."""
import pytest
import torch

from trainer.memory import PAPER_TABLE5, model_bytes, table5_rows
from trainer.model import Net, bottleneck_widths

CONVS = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]  # vgg16_bn "D"
F32, I64 = 4, 8


def linear_bn(d_in: int, d_out: int) -> tuple[int, int]:
    """(params, buffers) counts of Linear(d_in, d_out) + BatchNorm(d_out), in bytes.
    BN keeps gamma, beta (params) and running mean, var (float32) + num_batches_tracked (int64)."""
    return (d_in * d_out + d_out + 2 * d_out) * F32, 2 * d_out * F32 + I64


def conv_section(divisor: int = 1) -> tuple[int, int]:
    params = buffers = 0
    c_in = 3
    for c in CONVS:
        c //= divisor
        p, b = linear_bn(9 * c_in, c)     # a 3x3 conv is a Linear over 9*c_in inputs
        params, buffers, c_in = params + p, buffers + b, c
    return params, buffers


def expected_bytes(arch: str, width: int, classes: int = 10, divisor: int = 1,
                   image_size: int = 32) -> tuple[int, int]:
    """Bytes computed from the layer widths alone, independently of trainer/model.py. At
    224x224 the 7x7x512 conv output is flattened into the first FC layer."""
    params, buffers = conv_section(divisor)
    d = 512 // divisor * (image_size // 32) ** 2
    if arch == "vgg16":
        h = 4096 // divisor
        return params + (d * h + h + h * h + h + h * classes + classes) * F32, buffers
    widths = [16 * width, 16 * width, 8 * width, 8 * width, 4 * width, 4 * width,
              2 * width, 2 * width, width, width]
    for d_in, d_out in zip([d] + widths, widths):
        p, b = linear_bn(d_in, d_out)
        params, buffers = params + p, buffers + b
    return params + (width * classes + classes) * F32, buffers


def test_bottleneck_widths_halve_bilayerly_from_16w():
    assert bottleneck_widths(32) == [512, 512, 256, 256, 128, 128, 64, 64, 32, 32]
    assert bottleneck_widths(8) == [128, 128, 64, 64, 32, 32, 16, 16, 8, 8]


@pytest.mark.parametrize("arch,width,params,buffers", [
    ("vgg16", 32, 134_586_664, 33_896),
    ("bottleneck", 32, 62_059_304, 49_848),
], ids=["vgg16", "bottleneck-w32"])
def test_table5_exact_at_full_width(arch, width, params, buffers):
    assert model_bytes(Net(arch, width, 10)) == (params, buffers)
    assert expected_bytes(arch, width) == (params, buffers)   # the test's own arithmetic agrees


@pytest.mark.parametrize("width", [16, 8], ids=["w16", "w8"])
def test_table5_w16_w8_are_the_k16w_chain_and_differ_from_paper_as_documented(width):
    ours = model_bytes(Net("bottleneck", width, 10))
    assert ours == expected_bytes("bottleneck", width)
    paper_params, paper_buffers = PAPER_TABLE5[f"bottleneck_w{width}"]
    extra_units = 512 - 16 * width            # DESIGN.md: FC1 kept 512 wide in the paper
    assert paper_params - ours[0] == extra_units * 515 * F32   # 512 weights + bias + gamma + beta
    assert paper_buffers - ours[1] == extra_units * 2 * F32    # running mean + var


def test_table5_rows_put_ours_beside_the_paper_and_add_the_224_models():
    rows = {(r["model"], r["image_size"]): r for r in table5_rows()}
    assert list(rows) == [(m, s) for s in (32, 224) for m in PAPER_TABLE5]
    for (name, size), r in rows.items():
        arch, _, w = name.partition("_w")
        assert (r["param_bytes"], r["buffer_bytes"]) == expected_bytes(arch, int(w or 32), image_size=size)
        paper = PAPER_TABLE5[name] if size == 32 else (None, None)    # Table 5 is the 32 px model
        assert (r["paper_param_bytes"], r["paper_buffer_bytes"]) == paper
        assert r["total_bytes"] == r["param_bytes"] + r["buffer_bytes"]
    assert rows[("vgg16", 224)]["param_bytes"] == 537_239_848    # FC1 alone: 25,088 x 4,096


@pytest.mark.parametrize("arch,width,classes,divisor", [
    ("bottleneck", 4, 10, 16),
    ("bottleneck", 8, 100, 8),
    ("vgg16", 32, 10, 16),
    ("vgg16", 32, 100, 8),
], ids=["bottleneck-w4-c10-d16", "bottleneck-w8-c100-d8", "vgg16-c10-d16", "vgg16-c100-d8"])
def test_bytes_at_any_divisor_and_class_count(arch, width, classes, divisor):
    assert model_bytes(Net(arch, width, classes, divisor)) == \
        expected_bytes(arch, width, classes, divisor)


@pytest.mark.parametrize("arch,width,divisor,feat_dims", [
    ("bottleneck", 4, 16, [32, 64, 64, 32, 32, 16, 16, 8, 8, 4, 4]),
    ("vgg16", 32, 16, [32, 256, 256]),
], ids=["bottleneck", "vgg16"])
def test_forward_returns_logits_and_the_activations_the_regularizer_needs(
        arch, width, divisor, feat_dims):
    torch.manual_seed(0)
    model = Net(arch, width, 10, divisor)
    logits, feats = model(torch.randn(6, 3, 32, 32))
    assert logits.shape == (6, 10)
    assert [f.shape for f in feats] == [(6, d) for d in feat_dims]
    assert torch.isfinite(logits).all()


def test_recomputation_uses_the_main_pass_batch_stats_and_leaves_running_stats():
    """The regularizer recomputes a block with track_stats=False: same output, no second
    update. (The trainer's layers: trainer/fused.py; FusedNet.forward counts the batches.)"""
    from trainer.fused import GroupedFCBlock

    torch.manual_seed(0)
    block = GroupedFCBlock([Net("bottleneck", 4, 10, 16).head.blocks[0]]).train()
    x = torch.randn(8, 32)
    main = block(x)
    block.bn.num_batches_tracked.add_(1)
    mean, var, n = (block.bn.running_mean.clone(), block.bn.running_var.clone(),
                    int(block.bn.num_batches_tracked))
    again = block(x, track_stats=False)
    torch.testing.assert_close(again, main, rtol=0, atol=1e-6)
    assert torch.equal(block.bn.running_mean, mean) and torch.equal(block.bn.running_var, var)
    assert int(block.bn.num_batches_tracked) == n == 1


def test_table5_in_the_trainer_is_the_papers_as_the_tables_hold_it():
    """Table 5's published bytes live twice: the trainer's `python -m trainer memory` and
    orchestrator/results/paper.yaml (the tables' copy of every published number)."""
    from orchestrator.results.tables import load_paper

    published = load_paper()["table5"]
    assert set(published) == set(PAPER_TABLE5)
    for name, (params, buffers) in PAPER_TABLE5.items():
        assert (published[name]["parameters"], published[name]["buffers"]) == (params, buffers)
        assert published[name]["total"] == params + buffers
