"""Face recognition backbones behind one factory, `get_model(name, embedding_dim=..., **kw)`.

Every backbone maps an aligned face, float32 [N, 3, 112, 96] in [-1, 1] (see `lrface.core.face`), to an
embedding [N, D] that is NOT L2-normalised: margin heads and exported graphs normalise it themselves.

Families (one small block per concept, composed into networks):
- MobileFaceNet (Chen et al. 2018): depthwise bottlenecks and a global depthwise conv ("GDC") over the final
  7x6 map instead of pooling, so the embedding keeps where on the face a feature was. `mbf_small` (the default,
  0.2 M parameters, ~32 M multiply-adds) trains on a 2-core CPU; `mbf_fast` is the same size at ~40% of the
  CPU time; `mbf` is the paper-sized network (1 M parameters).
- IResNet (ArcFace's "improved" ResNet): BN-conv-BN-PReLU-conv-BN residual units, BN + dropout + FC head on
  the flattened 7x6x512 map. `iresnet18/34/50/100`.
The 112x96 canvas gives a 7x6 map after four stride-2 stages (both families), which the heads are sized for.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

FACE_SHAPE = (3, 112, 96)  # C, H, W of the input canvas
FINAL_MAP = (7, 6)  # spatial size after a total stride of 16


# --------------------------------------------------------------------------------------------- MobileFaceNet
class ConvBNAct(nn.Sequential):
    """conv -> BN -> PReLU (or no activation when `act=False`, for linear bottleneck outputs)."""

    def __init__(self, cin: int, cout: int, kernel=3, stride=1, groups=1, act: bool = True, relu: bool = False):
        padding = (kernel - 1) // 2 if isinstance(kernel, int) else 0
        layers = [nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU(inplace=True) if relu else nn.PReLU(cout))
        super().__init__(*layers)


class InvertedBottleneck(nn.Module):
    """MobileNetV2 unit: 1x1 expand -> 3x3 depthwise -> 1x1 linear project, residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int, relu: bool = False):
        super().__init__()
        hidden = cin * expansion
        self.use_residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            ConvBNAct(cin, hidden, 1, relu=relu),
            ConvBNAct(hidden, hidden, 3, stride, groups=hidden, relu=relu),
            ConvBNAct(hidden, cout, 1, act=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_residual else y


class MobileFaceNet(nn.Module):
    """MobileFaceNet with a width multiplier; `stages` are (expansion, channels, repeats, stride).

    `stem_stride=4` (the stem's depthwise conv also strides) and `relu=True` (ReLU instead of PReLU) halve
    the CPU cost; LR probes (18-56 px high) carry no detail finer than a 28x24 map anyway.
    """

    def __init__(self, embedding_dim: int = 128, width: float = 1.0, final_channels: int = 512,
                 stages: tuple[tuple[int, int, int, int], ...] = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1),
                                                                  (4, 128, 1, 2), (2, 128, 2, 1)),
                 stem_stride: int = 2, relu: bool = False):
        super().__init__()

        def ch(c: int) -> int:
            return max(8, int(round(c * width / 8)) * 8)

        stem = ch(64)
        self.stem = nn.Sequential(ConvBNAct(3, stem, 3, 2, relu=relu),
                                  ConvBNAct(stem, stem, 3, stem_stride // 2, groups=stem, relu=relu))
        blocks, cin = [], stem
        for expansion, channels, repeats, stride in stages:
            for i in range(repeats):
                blocks.append(InvertedBottleneck(cin, ch(channels), stride if i == 0 else 1, expansion, relu))
                cin = ch(channels)
        self.blocks = nn.Sequential(*blocks)
        final = ch(final_channels)
        self.expand = ConvBNAct(cin, final, 1, relu=relu)
        # Global depthwise conv: one learned spatial weighting per channel over the whole 7x6 map.
        self.gdc = ConvBNAct(final, final, FINAL_MAP, 1, groups=final, act=False)
        self.embedding = nn.Sequential(nn.Conv2d(final, embedding_dim, 1, bias=False), nn.BatchNorm2d(embedding_dim))
        self.embedding_dim = embedding_dim
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 3, 112, 96] -> [N, D]
        x = self.blocks(self.stem(x))
        x = self.gdc(self.expand(x))  # [N, C, 1, 1]
        return self.embedding(x).flatten(1)


# --------------------------------------------------------------------------------------------------- IResNet
class IBasicBlock(nn.Module):
    """IResNet residual unit: BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


class IResNet(nn.Module):
    def __init__(self, layers: tuple[int, int, int, int], embedding_dim: int = 512,
                 widths: tuple[int, int, int, int] = (64, 128, 256, 512), dropout: float = 0.0):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.PReLU(widths[0]))
        stages, cin = [], widths[0]
        for repeats, cout in zip(layers, widths):
            stages += [IBasicBlock(cin, cout, 2)] + [IBasicBlock(cout, cout, 1) for _ in range(repeats - 1)]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(cin * FINAL_MAP[0] * FINAL_MAP[1], embedding_dim),
            nn.BatchNorm1d(embedding_dim),
        )
        self.embedding_dim = embedding_dim
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 3, 112, 96] -> [N, D]
        return self.head(self.stages(self.stem(x)))


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------------- factory
_SMALL_STAGES = ((2, 64, 2, 2), (4, 128, 1, 2), (2, 128, 3, 1), (4, 128, 1, 2), (2, 128, 1, 1))
_FAST_STAGES = ((2, 64, 2, 1), (4, 128, 1, 2), (2, 128, 3, 1), (4, 128, 1, 2), (2, 128, 1, 1))
_TINY_STAGES = ((2, 64, 1, 2), (2, 128, 1, 2), (2, 128, 1, 2))

MODELS: dict[str, Callable[..., nn.Module]] = {
    # Tests only: a few thousand parameters, still 112x96 -> 7x6.
    "mbf_tiny": lambda embedding_dim=32, **kw: MobileFaceNet(embedding_dim, width=0.125, final_channels=64,
                                                             stages=_TINY_STAGES, **kw),
    "mbf_small": lambda embedding_dim=128, **kw: MobileFaceNet(embedding_dim, width=0.5, final_channels=512,
                                                               stages=_SMALL_STAGES, **kw),
    # Same parameters as mbf_small at about 40% of its CPU time (stride-4 stem, ReLU).
    "mbf_fast": lambda embedding_dim=128, **kw: MobileFaceNet(embedding_dim, width=0.5, final_channels=512,
                                                              stages=_FAST_STAGES, stem_stride=4, relu=True, **kw),
    "mbf": lambda embedding_dim=128, **kw: MobileFaceNet(embedding_dim, **kw),
    "iresnet18": lambda embedding_dim=512, **kw: IResNet((2, 2, 2, 2), embedding_dim, **kw),
    "iresnet34": lambda embedding_dim=512, **kw: IResNet((3, 4, 6, 3), embedding_dim, **kw),
    "iresnet50": lambda embedding_dim=512, **kw: IResNet((3, 4, 14, 3), embedding_dim, **kw),
    "iresnet100": lambda embedding_dim=512, **kw: IResNet((3, 13, 30, 3), embedding_dim, **kw),
}


def get_model(name: str, embedding_dim: int | None = None, **kw) -> nn.Module:
    """A backbone by name; `embedding_dim` (D) defaults to the family's usual size."""
    if name not in MODELS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(MODELS)}")
    if embedding_dim is not None:
        kw["embedding_dim"] = embedding_dim
    return MODELS[name](**kw)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
