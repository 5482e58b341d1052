"""VGG16-BN's conv section with either the paper's bottleneck head or the vanilla VGG16 head.

Both return (logits, feats): feats[0] is the conv output and feats[k] the activation of
head layer k (FC1..FC10 for the bottleneck), which the manifold regularizer compares.
The model computes no loss. This is one trial's network: its state_dict is the checkpoint
format and its bytes are Table 5's. Training runs it through trainer/fused.py, which stacks
the networks of a group of trials (a group of one for a solo trial).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# torchvision's vgg16_bn "D" configuration: 13 conv3x3+BN+ReLU, 5 max-pools ("M").
VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16_features(divisor: int = 1) -> nn.Sequential:
    """(B, 3, S, S) -> (B, 512/divisor, S/32, S/32). divisor=1 is the paper's network."""
    layers, c_in = [], 3
    for v in VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            c_out = v // divisor
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True)]
            c_in = c_out
    return nn.Sequential(*layers)


def head_input_size(divisor: int, image_size: int, head_input: str) -> int:
    """Features entering the head. At 32x32 the conv output is 1x1x512: both readings agree.
    At 224x224 it is 7x7x512. Our reading (DESIGN.md, "Memory"): flattened into FC1, 25,088
    features, which reproduces the paper's jump from forward peak to overall peak (FC1's
    gradient); `pool` averages it to 512 features instead."""
    side = image_size // 32
    return 512 // divisor * (side * side if head_input == "flatten" else 1)


def to_head_input(h: torch.Tensor, head_input: str) -> torch.Tensor:
    """Conv output (..., C, s, s) -> (..., D): flattened, or averaged over the s x s map."""
    return h.flatten(-3) if head_input == "flatten" else h.mean((-2, -1))


def bottleneck_widths(width: int) -> list[int]:
    """The paper's FC1..FC10, "halving bilayerly" from K = 16*W down to W.
    W=32 -> [512, 512, 256, 256, 128, 128, 64, 64, 32, 32], which reproduces Table 5's
    bytes exactly (DESIGN.md: the W=16/8 columns fit no plain chain; we keep K = 16*W)."""
    return [16 * width // 2 ** (i // 2) for i in range(10)]


class FCBlock(nn.Module):
    """Linear + BatchNorm1d + ReLU: one bottleneck layer."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.fc = nn.Linear(d_in, d_out)
        self.bn = nn.BatchNorm1d(d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.fc(x)))


class BottleneckHead(nn.Module):
    def __init__(self, d_in: int, width: int, num_classes: int):
        super().__init__()
        widths = bottleneck_widths(width)
        self.blocks = nn.ModuleList(FCBlock(a, b) for a, b in zip([d_in] + widths, widths))
        self.out = nn.Linear(widths[-1], num_classes)

    def forward(self, h0: torch.Tensor):
        feats = [h0]                                     # [(B, d_in), (B, 16W), ..., (B, W)]
        for block in self.blocks:
            feats.append(block(feats[-1]))
        return self.out(feats[-1]), feats


class VGGHead(nn.Module):
    """The vanilla VGG16 classifier: d_in (512 at 32x32) -> 4096 -> 4096 -> classes."""

    def __init__(self, d_in: int, hidden: int, num_classes: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_in, hidden), nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, num_classes)
        self.drop = nn.Dropout(0.5)

    def forward(self, h0: torch.Tensor):
        h1 = F.relu(self.fc1(h0))
        h2 = F.relu(self.fc2(self.drop(h1)))
        return self.out(self.drop(h2)), [h0, h1, h2]


class Net(nn.Module):
    def __init__(self, arch: str, width: int, num_classes: int, divisor: int = 1,
                 image_size: int = 32, head_input: str = "flatten"):
        super().__init__()
        self.head_input = head_input
        self.features = vgg16_features(divisor)
        d = head_input_size(divisor, image_size, head_input)
        self.head = (BottleneckHead(d, width, num_classes) if arch == "bottleneck"
                     else VGGHead(d, 4096 // divisor, num_classes))

    def forward(self, x: torch.Tensor):
        h0 = to_head_input(self.features(x), self.head_input)   # (B, 3, S, S) -> (B, D)
        return self.head(h0)                                     # logits (B, classes), feats


def build_model(cfg) -> Net:
    """One trial's network, initialised from its seed on the CPU (so the same seed gives
    the same weights on every device and in every dtype), then moved and cast."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        net = Net(cfg.arch, cfg.width, cfg.num_classes, cfg.vgg_width_divisor, cfg.image_size,
                  cfg.head_input)
    return net if cfg.dtype == "float32" else net.to(getattr(torch, cfg.dtype))
