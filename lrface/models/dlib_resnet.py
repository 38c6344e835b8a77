"""dlib's face-recognition ResNet (`dlib_face_recognition_resnet_model_v1.dat`) as a torch network.

The weights are read directly from dlib's own serialization (no dlib, no XML dump): `read_dat(path)` walks the
file and returns the layers' parameters; `DlibResNet.from_dat(path)` builds the network from them. Facts used
(layer layout, padding rules, zero-padded shortcuts, input normalisation, the `.dat` format) are in
`../shared/reference/dlib-resnet.md`; a forward pass written from them matches dlib's own descriptors to ~1e-6
(`tests/test_dlib_resnet.py`, against descriptors computed once with `dlib-bin`).

    chip [N, 3, 150, 150] float RGB pixels in 0..255  ->  DlibResNet  ->  [N, 128] (dlib's descriptor, not
                                                                         normalised; dlib compares Euclidean
                                                                         distances at 0.6)
    face [N, 3, 112, 96] in [-1, 1] (our aligned template)  ->  ChipWarp  ->  chip  (the fixed similarity warp
                                                                                 to dlib's chip geometry)

`DlibFaceModel` = ChipWarp + DlibResNet: a backbone with the project's face contract (see lrface.models.backbones).
The weights file ships in the PyPI package `face-recognition-models` (CC0), which only training needs: exported
ONNX graphs carry the weights themselves.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lrface.models.dlib_weights import DAT_NAME, DAT_SHA256, default_dat_path  # noqa: F401 (re-exported)
from lrface.core.face import TEMPLATE_TO_DLIB_CHIP

CHIP_SIZE = 150
# our 112x96 template -> dlib's 150x150 chip: x' = a x - b y + tx, y' = b x + a y + ty (pixels), with a replicated
# border (cv2.warpAffine(crop, M, (150, 150), borderMode=cv2.BORDER_REPLICATE))
TEMPLATE_TO_CHIP = TEMPLATE_TO_DLIB_CHIP
# residual stages after the stem: (channels, blocks, first block downsamples)
STAGES = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))


class DatFormatError(ValueError):
    """The file is not (a complete copy of) dlib's face-recognition ResNet."""


# ---------------------------------------------------------------------------------------------------------------
# the .dat reader (dlib's serialize.h / dnn/tensor.h / dnn/core.h / dnn/layers.h)

class _Reader:
    def __init__(self, data: bytes, name: str):
        self.data, self.pos, self.name = data, 0, name

    def _take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise DatFormatError(f"{self.name}: truncated at byte {self.pos} of {len(self.data)} while reading "
                                 f"{what} (a complete {DAT_NAME} has 22,466,066 bytes)")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def int(self, what: str = "an integer") -> int:
        control = self._take(1, what)[0]
        size = control & 0x0F
        if size > 8 or control & 0x70:
            raise DatFormatError(f"{self.name}: byte {self.pos - 1}: {control:#04x} is not an integer's control "
                                 f"byte (while reading {what})")
        value = int.from_bytes(self._take(size, what), "little") if size else 0
        return -value if control & 0x80 else value

    def bool(self, what: str = "a boolean") -> bool:
        b = self._take(1, what)
        if b not in (b"0", b"1"):
            raise DatFormatError(f"{self.name}: byte {self.pos - 1}: {b!r} is not a serialized boolean ({what})")
        return b == b"1"

    def float(self, what: str = "a float") -> float:
        mantissa, exponent = self.int(what), self.int(what)
        return float(mantissa) * 2.0 ** exponent

    def str(self, what: str = "a string") -> str:
        n = self.int(what)
        if not 0 <= n <= 256:
            raise DatFormatError(f"{self.name}: implausible string length {n} at byte {self.pos} ({what})")
        return self._take(n, what).decode("latin-1")

    def tensor(self, what: str) -> np.ndarray:
        version = self.int(what)
        if version == 1:  # alias tensor: a view, no data
            for _ in range(4):
                self.int(what)
            return np.zeros(0, np.float32)
        if version != 2:
            raise DatFormatError(f"{self.name}: unknown tensor version {version} ({what})")
        shape = tuple(self.int(what) for _ in range(4))
        if min(shape) < 0:
            raise DatFormatError(f"{self.name}: negative tensor shape {shape} ({what})")
        count = int(np.prod(shape))
        return np.frombuffer(self._take(4 * count, what), dtype="<f4").astype(np.float32).reshape(shape)


@dataclass
class DlibWeights:
    """Everything a forward pass needs, in network order (stem first)."""
    means: tuple[float, float, float]
    convs: list[dict] = field(default_factory=list)  # weight [O, C, kh, kw], bias [O], stride, pad
    affines: list[dict] = field(default_factory=list)  # gamma [C], beta [C]
    fc: np.ndarray | None = None  # [256, 128], forward is x @ fc
    layers: list[str] = field(default_factory=list)  # layer names, bottom up (for checks and errors)


def _layer_trailer(r: _Reader, name: str, over_input: bool) -> None:
    """add_layer's state after its details: three flags and the (empty) gradient / output tensors; the layer right
    over the input also stores its sample expansion factor."""
    for flag in ("setup_called", "gradient_input_is_stale", "output_and_gradient_disabled"):
        r.bool(f"{name}.{flag}")
    for t in ("x_grad", "cached_output", "params_grad"):
        r.tensor(f"{name}.{t}")
    if over_input:
        r.int(f"{name}.sample_expansion_factor")


def read_dat(path: str | os.PathLike) -> DlibWeights:
    """Parse dlib's `dlib_face_recognition_resnet_model_v1.dat`; DatFormatError when it is anything else."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatFormatError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    r = _Reader(data, str(path))
    if r.int("the loss layer's version") != 1 or r.str("the loss layer's name") != "loss_metric_2":
        raise DatFormatError(f"{path}: not dlib's face-recognition ResNet (no loss_metric_2 loss layer at the start)")
    r.float("loss margin")
    r.float("loss distance threshold")
    versions = 0
    while True:  # nested layer versions: 2 (add_layer), 1 (tag / skip), until 3 (the layer over the input)
        v = r.int("a layer version")
        versions += 1
        if v == 3:
            break
        if v not in (1, 2) or versions > 1000:
            raise DatFormatError(f"{path}: unexpected layer version {v} at byte {r.pos}")
    if r.str("the input layer") != "input_rgb_image_sized":
        raise DatFormatError(f"{path}: the input layer is not input_rgb_image_sized")
    means = (r.float("mean R"), r.float("mean G"), r.float("mean B"))
    if (r.int("input rows"), r.int("input columns")) != (CHIP_SIZE, CHIP_SIZE):
        raise DatFormatError(f"{path}: the input layer is not {CHIP_SIZE}x{CHIP_SIZE}")
    w = DlibWeights(means=means)
    while True:
        name = r.str("a layer name")
        w.layers.append(name)
        if name == "con_4":
            params = r.tensor("con params").reshape(-1)
            filters, kh, kw = r.int(), r.int(), r.int()
            stride, stride_x, pad, pad_x = r.int(), r.int(), r.int(), r.int()
            r.tensor("con filters alias")
            r.tensor("con biases alias")
            for _ in range(4):
                r.float("con multipliers")
            n_weights = params.size - filters
            if n_weights <= 0 or n_weights % (filters * kh * kw) or stride != stride_x or pad != pad_x:
                raise DatFormatError(f"{path}: convolution {len(w.convs)} has an unexpected shape")
            cin = n_weights // (filters * kh * kw)
            w.convs.append({"weight": params[:n_weights].reshape(filters, cin, kh, kw),
                            "bias": params[n_weights:], "stride": stride, "pad": pad})
        elif name == "affine_":
            params = r.tensor("affine params").reshape(-1)
            r.tensor("affine gamma alias")
            r.tensor("affine beta alias")
            if r.int("affine mode") != 0 or params.size % 2:
                raise DatFormatError(f"{path}: affine layer {len(w.affines)} is not per-channel")
            half = params.size // 2
            w.affines.append({"gamma": params[:half], "beta": params[half:]})
        elif name in ("relu_", "add_prev_", "relu", "add_prev"):
            pass
        elif name in ("max_pool_2", "avg_pool_2"):
            for _ in range(6):
                r.int(f"{name} geometry")
        elif name == "fc_2":
            outputs, inputs = r.int("fc outputs"), r.int("fc inputs")
            params = r.tensor("fc params")
            r.tensor("fc weights alias")
            r.tensor("fc biases alias")
            bias_mode = r.int("fc bias mode")
            for _ in range(4):
                r.float("fc multipliers")
            if bias_mode != 1 or params.size != outputs * inputs:
                raise DatFormatError(f"{path}: the fc layer is not {inputs}->{outputs} without bias")
            w.fc = params.reshape(inputs, outputs)
        else:
            raise DatFormatError(f"{path}: unknown layer {name!r} at byte {r.pos}")
        _layer_trailer(r, name, over_input=len(w.layers) == 1)
        if name == "fc_2":
            break
    expected_convs = 1 + 2 * sum(n for _, n, _ in STAGES)
    if len(w.convs) != expected_convs or len(w.affines) != expected_convs or w.fc is None or w.fc.shape != (256, 128):
        raise DatFormatError(f"{path}: {len(w.convs)} convolutions and {len(w.affines)} affine layers; dlib's "
                             f"face-recognition ResNet has {expected_convs} of each and a 256->128 fc layer")
    return w


# ---------------------------------------------------------------------------------------------------------------
# the network

class Affine(nn.Module):
    """dlib's `affine_` layer (a frozen batch norm): y = gamma_c * x + beta_c. The parameters are stored as
    [C, 1, 1] so that an exported graph uses them as they are (named initializers, no reshapes)."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma + self.beta


def add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the smaller tensor is zero-padded at the end of the channel, row and column axes."""
    def grow(t: torch.Tensor, c: int, h: int, w: int) -> torch.Tensor:
        dc, dh, dw = c - t.shape[1], h - t.shape[2], w - t.shape[3]
        return F.pad(t, (0, dw, 0, dh, 0, dc)) if (dc or dh or dw) else t
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))
    return grow(a, c, h, w) + grow(b, c, h, w)


class DlibBlock(nn.Module):
    """conv3x3 (stride s, padding 0 when s = 2) -> affine -> ReLU -> conv3x3 -> affine, + shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, down: bool):
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(cin, cout, 3, 2 if down else 1, 0 if down else 1)
        self.bn1 = Affine(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.bn2 = Affine(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(add_prev(y, shortcut))


class DlibResNet(nn.Module):
    """dlib's ResNet-29: chip [N, 3, 150, 150] RGB pixels (0..255) -> descriptor [N, 128]."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, 3, 1, 1))
        self.stem = nn.Conv2d(3, 32, 7, 2, 0)
        self.stem_bn = Affine(32)
        blocks, cin = [], 32
        for channels, count, down in STAGES:
            for i in range(count):
                blocks.append(DlibBlock(cin, channels, down and i == 0))
                cin = channels
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(256, 128, bias=False)

    def trunk(self, chip: torch.Tensor) -> torch.Tensor:
        """Input normalisation, stem and max-pool: [N, 32, 35, 35]."""
        x = (chip - self.mean) / 256.0
        return F.max_pool2d(F.relu(self.stem_bn(self.stem(x))), 3, 2)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))  # the last block ends with ReLU

    def forward(self, chip: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.trunk(chip)))

    def load_dlib_weights(self, w: DlibWeights) -> "DlibResNet":
        convs = [self.stem] + [c for b in self.blocks for c in (b.conv1, b.conv2)]
        affines = [self.stem_bn] + [a for b in self.blocks for a in (b.bn1, b.bn2)]
        with torch.no_grad():
            self.mean.copy_(torch.tensor(w.means, dtype=torch.float32).view(1, 3, 1, 1))
            for i, (conv, spec) in enumerate(zip(convs, w.convs)):
                if tuple(conv.weight.shape) != spec["weight"].shape or conv.stride[0] != spec["stride"] \
                        or conv.padding[0] != spec["pad"]:
                    raise DatFormatError(f"convolution {i}: file has {spec['weight'].shape} stride {spec['stride']} "
                                         f"pad {spec['pad']}, the network expects {tuple(conv.weight.shape)} "
                                         f"stride {conv.stride[0]} pad {conv.padding[0]}")
                conv.weight.copy_(torch.from_numpy(spec["weight"]))
                conv.bias.copy_(torch.from_numpy(spec["bias"]))
            for affine, spec in zip(affines, w.affines):
                affine.gamma.copy_(torch.from_numpy(spec["gamma"]).view(-1, 1, 1))
                affine.beta.copy_(torch.from_numpy(spec["beta"]).view(-1, 1, 1))
            self.fc.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.fc.T)))
        return self

    @classmethod
    def from_dat(cls, path: str | os.PathLike | None = None) -> "DlibResNet":
        return cls().load_dlib_weights(read_dat(path or default_dat_path())).eval()


# ---------------------------------------------------------------------------------------------------------------
# geometry: our template -> dlib's chip

def chip_sampling_grid(matrix: np.ndarray = TEMPLATE_TO_CHIP, size: int = CHIP_SIZE,
                       src_hw: tuple[int, int] = (112, 96)) -> torch.Tensor:
    """grid_sample grid [1, size, size, 2] for the affine crop->chip warp (cv2.warpAffine's pixel-centre convention)."""
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    x = inv[0, 0] * u + inv[0, 1] * v + inv[0, 2]
    y = inv[1, 0] * u + inv[1, 1] * v + inv[1, 2]
    h, w = src_hw
    grid = np.stack([(2 * x + 1) / w - 1, (2 * y + 1) / h - 1], axis=-1)  # align_corners=False
    return torch.from_numpy(grid.astype(np.float32))[None]


def warp_to_chip_numpy(crop: np.ndarray) -> np.ndarray:
    """uint8 112x96x3 crop -> uint8 150x150x3 chip with OpenCV, the reference geometry (tests, dlib comparisons)."""
    import cv2

    return cv2.warpAffine(crop, TEMPLATE_TO_CHIP, (CHIP_SIZE, CHIP_SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


class ChipWarp(nn.Module):
    """face [N, 3, 112, 96] in [-1, 1] -> chip [N, 3, 150, 150] in pixel units (0..255), bilinear, border replicated."""

    def __init__(self):
        super().__init__()
        self.register_buffer("grid", chip_sampling_grid(), persistent=False)

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        pixels = face * 127.5 + 127.5
        grid = self.grid.expand(face.shape[0], -1, -1, -1)
        return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)


class DlibFaceModel(nn.Module):
    """Our face contract for dlib's ResNet: face [N, 3, 112, 96] in [-1, 1] -> [N, 128] (not normalised)."""

    def __init__(self, resnet: DlibResNet | None = None):
        super().__init__()
        self.warp = ChipWarp()
        self.resnet = resnet if resnet is not None else DlibResNet()

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        return self.resnet(self.warp(face))

    @classmethod
    def from_dat(cls, path: str | os.PathLike | None = None) -> "DlibFaceModel":
        return cls(DlibResNet.from_dat(path)).eval()


def count_macs() -> int:
    """Multiply-adds of one 150x150 forward pass (convolutions and fc)."""
    total, size = 3 * 32 * 49 * 72 * 72, 35
    cin = 32
    for channels, count, down in STAGES:
        for i in range(count):
            out = (size - 3) // 2 + 1 if (down and i == 0) else size
            total += cin * channels * 9 * out * out + channels * channels * 9 * out * out
            size, cin = out, channels
    return total + 256 * 128

