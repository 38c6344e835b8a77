"""MR-GAN networks (Fang et al., "Generate to Adapt", ECCV 2020): multi-resolution generator, local generators, discriminators.

Input contract (written once, here and in docs/ARCHITECTURE.md): `face` float32 [N, 3, 112, 96] RGB in [-1, 1],
`z` float32 [N, Z] standard normal, `scale` float32 [N, 1] = target LR height h / 112, `noise` float32
[N, 3, 112, 96] standard normal (per-pixel sensor noise). The generator returns `lr` [N, 3, 112, 96] in [-1, 1]:
the LR capture of height h and width round(h * 96 / 112) in the top-left corner, the rest of the tensor the
capture's last row / column repeated (callers crop `lr[:, :, :h, :w]`).

A camera in three steps, each in the graph:
1. optics and scene, at the HR canvas: the multi-resolution global generator with spatial attention and the
   local generators (eyes, nose, mouth), conditioned on `z` and `scale`;
2. sampling: each item resampled to its own height with an antialiased bicubic filter written as two matrix
   products (`resample_matrix`), so one ONNX graph with a dynamic batch resamples every item to its own size;
3. the sensor and its processing, at the LR size: a z-driven colour transform (white balance, haze, night-mode
   greyscale) and a small conv net fed with per-pixel noise and the 8x8 block phase (sensor noise, chroma
   blotches, compression), whose last layer starts at zero.
Training and export run the very same graph.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lrface.core.face import FACE_HEIGHT, FACE_WIDTH, REGIONS, Region

STREAM_SIZES = ((FACE_HEIGHT, FACE_WIDTH), (FACE_HEIGHT // 2, FACE_WIDTH // 2), (FACE_HEIGHT // 4, FACE_WIDTH // 4))


@dataclass
class MRGANConfig:
    """Everything that defines an MR-GAN experiment. Experiments (lrface/training/configs/mrgan_*.py) override fields."""

    name: str = "mrgan_base"
    # networks
    width: int = 16  # channels of the 112x96 stream; the 56x48 and 28x24 streams have 2x and 4x
    fusion_stages: int = 2  # multi-resolution stages, each ending in a fusion of all three streams
    blocks_per_stage: int = 1  # residual blocks per stream per stage
    noise_channels: int = 4  # spatial noise maps projected from z into the 28x24 stream
    z_dim: int = 16
    local_width: int = 16
    local_res_blocks: int = 2
    local_feather: int = 4  # px over which a local patch fades into the global output
    use_sensor_stage: bool = True  # step 3 above; off = the resampled canvas is the output
    sensor_width: int = 16
    sensor_blocks: int = 2
    disc_width: int = 32
    disc_layers: int = 3  # strided conv layers of the global PatchGAN discriminator
    local_disc_width: int = 32
    # ablation switches (supplementary Table 1)
    use_attention: bool = True
    use_attention_loss: bool = True
    use_local_generators: bool = True
    use_local_discriminators: bool = True
    # losses
    lambda_adv: float = 1.0
    lambda_local_adv: float = 1.0  # weight of the sum of the three local adversarial terms
    lambda_attention: float = 0.05
    lambda_pixel: float = 10.0
    pixel_every: int = 5  # the pixel loss joins every `pixel_every`-th generator update (Algorithm 1)
    lambda_low_freq: float = 0.0
    # optimisation
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    batch_size: int = 32
    steps: int = 20000
    height_tolerance: int = 3  # real LR faces within +-this many px of the sampled height form the real batch
    amp: bool = True
    seed: int = 0
    ckpt_every: int = 500
    sample_every: int = 500
    log_every: int = 50


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


def constant_channel(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[N, 1] values broadcast to an [N, 1, H, W] constant channel shaped like `like` (export-friendly)."""
    return value[:, :, None, None] * torch.ones_like(like[:, :1])


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.InstanceNorm2d(channels, affine=True), _act(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.InstanceNorm2d(channels, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ConditionBias(nn.Module):
    """Per-channel bias from (z, scale): lets the random vector and the target scale steer a whole stream."""

    def __init__(self, cond_dim: int, channels: int):
        super().__init__()
        self.proj = nn.Linear(cond_dim, channels)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return x + self.proj(cond)[:, :, None, None]


class NoiseInjection(nn.Module):
    """Spatial noise maps at 28x24 as a learned projection of z, so the same z always gives the same face."""

    def __init__(self, z_dim: int, channels: int, size: tuple[int, int]):
        super().__init__()
        self.size = size
        self.proj = nn.Linear(z_dim, channels * size[0] * size[1])
        self.channels = channels

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.proj(z).unflatten(1, (self.channels, self.size[0], self.size[1]))


class Downsample(nn.Sequential):
    """Higher- to lower-resolution path of a fusion: one strided 3x3 conv per factor of 2."""

    def __init__(self, c_in: int, c_out: int, factor_log2: int):
        layers: list[nn.Module] = []
        c = c_in
        for k in range(factor_log2):
            last = k == factor_log2 - 1
            nxt = c_out if last else c
            layers += [nn.Conv2d(c, nxt, 3, stride=2, padding=1), nn.InstanceNorm2d(nxt, affine=True)]
            if not last:
                layers.append(_act())
            c = nxt
        super().__init__(*layers)


class Upsample(nn.Module):
    """Lower- to higher-resolution path of a fusion: 1x1 conv, then bilinear upsampling to the target stream size."""

    def __init__(self, c_in: int, c_out: int, size: tuple[int, int]):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 1)
        self.norm = nn.InstanceNorm2d(c_out, affine=True)
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.norm(self.conv(x)), size=self.size, mode="bilinear", align_corners=False)


class MultiResolutionFusion(nn.Module):
    """HRNet-style exchange unit: every stream receives the sum of all streams brought to its resolution."""

    def __init__(self, widths: tuple[int, ...]):
        super().__init__()
        self.paths = nn.ModuleList()
        for j, cj in enumerate(widths):
            row = nn.ModuleList()
            for i, ci in enumerate(widths):
                if i == j:
                    row.append(nn.Identity())
                elif i < j:  # higher resolution fused into a lower-resolution stream
                    row.append(Downsample(ci, cj, j - i))
                else:
                    row.append(Upsample(ci, cj, STREAM_SIZES[j]))
            self.paths.append(row)
        self.act = _act()

    def forward(self, streams: list[torch.Tensor]) -> list[torch.Tensor]:
        fused = []
        for row in self.paths:
            total = row[0](streams[0])
            for path, x in zip(list(row)[1:], streams[1:]):
                total = total + path(x)
            fused.append(self.act(total))
        return fused


class FusionStage(nn.Module):
    """Residual blocks in each stream, a fusion of all streams, then the (z, scale) bias on each stream."""

    def __init__(self, widths: tuple[int, ...], blocks: int, cond_dim: int):
        super().__init__()
        self.branches = nn.ModuleList(nn.Sequential(*[ResidualBlock(c) for _ in range(blocks)]) for c in widths)
        self.fusion = MultiResolutionFusion(widths)
        self.condition = nn.ModuleList(ConditionBias(cond_dim, c) for c in widths)

    def forward(self, streams: list[torch.Tensor], cond: torch.Tensor) -> list[torch.Tensor]:
        streams = [branch(x) for branch, x in zip(self.branches, streams)]
        streams = self.fusion(streams)
        return [bias(x, cond) for bias, x in zip(self.condition, streams)]


class AttentionHead(nn.Module):
    """Content image C (tanh) and spatial attention map A (sigmoid) from the fused 112x96 stream."""

    def __init__(self, channels: int, use_attention: bool):
        super().__init__()
        self.use_attention = use_attention
        self.body = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), _act())
        self.content = nn.Conv2d(channels, 3, 3, padding=1)
        self.attention = nn.Conv2d(channels, 1, 3, padding=1) if use_attention else None

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(features)
        content = torch.tanh(self.content(h))
        if self.attention is None:
            return content, torch.ones_like(content[:, :1])
        return content, torch.sigmoid(self.attention(h))


class GlobalGenerator(nn.Module):
    """Multi-resolution streams at 112x96, 56x48, 28x24 with repeated fusion, and a spatial attention head.

    Each stream starts from the face resampled to its resolution plus the scale channel; z enters as noise
    maps in the 28x24 stream and, with the scale, as a per-channel bias after every fusion stage.
    output = A * C + (1 - A) * face.
    """

    def __init__(self, cfg: MRGANConfig):
        super().__init__()
        w = cfg.width
        self.widths = (w, 2 * w, 4 * w)
        cond_dim = cfg.z_dim + 1
        self.noise = NoiseInjection(cfg.z_dim, cfg.noise_channels, STREAM_SIZES[2])
        extra = (0, 0, cfg.noise_channels)
        self.stems = nn.ModuleList(
            nn.Sequential(nn.Conv2d(3 + 1 + e, c, 3, padding=1), _act()) for c, e in zip(self.widths, extra)
        )
        self.stages = nn.ModuleList(FusionStage(self.widths, cfg.blocks_per_stage, cond_dim) for _ in range(cfg.fusion_stages))
        # the last fusion already sums every stream into the 112x96 one, so the head reads that stream only
        self.head = AttentionHead(self.widths[0], cfg.use_attention)

    def forward(self, face: torch.Tensor, z: torch.Tensor, scale: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs = [face, F.avg_pool2d(face, 2), F.avg_pool2d(face, 4)]
        noise = self.noise(z)
        streams = []
        for k, (stem, x) in enumerate(zip(self.stems, inputs)):
            parts = [x, constant_channel(scale, x)] + ([noise] if k == 2 else [])
            streams.append(stem(torch.cat(parts, 1)))
        cond = torch.cat([z, scale], 1)
        for stage in self.stages:
            streams = stage(streams, cond)
        content, attention = self.head(streams[0])
        if self.head.attention is None:
            out = content
        else:
            out = attention * content + (1 - attention) * face
        return {"lr_canvas": out, "content": content, "attention": attention}


class LocalGenerator(nn.Module):
    """One facial part (eyes, nose or mouth): conv encoder, residual blocks, z broadcast and concatenated, deconv decoder.

    Reads the HR crop and returns a residual for the same crop of the global output. The last conv starts at
    zero, so an untrained local generator leaves the global output as it is instead of pasting noise boxes.
    """

    def __init__(self, region: Region, cfg: MRGANConfig):
        super().__init__()
        assert region.height % 2 == 0 and region.width % 2 == 0, "patches are encoded at stride 2"
        self.region = region
        w = cfg.local_width
        self.encoder = nn.Sequential(
            nn.Conv2d(3 + 1, w, 3, padding=1), _act(),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.InstanceNorm2d(2 * w, affine=True), _act(),
        )
        self.blocks = nn.Sequential(*[ResidualBlock(2 * w) for _ in range(cfg.local_res_blocks)])
        self.merge_z = nn.Sequential(nn.Conv2d(2 * w + cfg.z_dim, 2 * w, 1), _act())
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1), nn.InstanceNorm2d(w, affine=True), _act(),
            nn.Conv2d(w, 3, 3, padding=1),
        )
        nn.init.zeros_(self.decoder[-1].weight)
        nn.init.zeros_(self.decoder[-1].bias)

    def forward(self, face: torch.Tensor, z: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        rows, cols = self.region.slices
        patch = face[:, :, rows, cols]
        h = self.blocks(self.encoder(torch.cat([patch, constant_channel(scale, patch)], 1)))
        z_map = z[:, :, None, None] * torch.ones_like(h[:, :1])
        return self.decoder(self.merge_z(torch.cat([h, z_map], 1)))


def feathered_mask(region: Region, feather: int) -> torch.Tensor:
    """[1, 1, 112, 96]: 1 inside the region, falling linearly to 0 over `feather` px at its border, 0 outside."""
    ys = torch.arange(region.height, dtype=torch.float32)
    xs = torch.arange(region.width, dtype=torch.float32)
    ramp_y = torch.minimum(ys + 1, region.height - ys) / max(feather, 1)
    ramp_x = torch.minimum(xs + 1, region.width - xs) / max(feather, 1)
    inner = torch.minimum(ramp_y[:, None], ramp_x[None, :]).clamp(max=1.0)
    mask = torch.zeros(1, 1, FACE_HEIGHT, FACE_WIDTH)
    rows, cols = region.slices
    mask[0, 0, rows, cols] = inner
    return mask


def _cubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel with a = -0.5 (Pillow's and torch's antialiased bicubic)."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def lr_size(scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, 1] scale -> ([N, 1] height, [N, 1] width) as float tensors: h = round(112 s), w = round(96 h / 112)."""
    h = torch.round(scale * FACE_HEIGHT).clamp(1, FACE_HEIGHT)
    return h, torch.round(h * FACE_WIDTH / FACE_HEIGHT).clamp(1, FACE_WIDTH)


def resample_matrix(out_len: torch.Tensor, in_len: int) -> torch.Tensor:
    """[N, 1] output lengths (<= in_len) -> [N, in_len, in_len] matrices M with M[n] @ signal = the signal
    resampled to out_len[n] samples (antialiased bicubic, as Pillow reduces an image) in the first out_len[n]
    rows; every later row repeats the last sample, so convolutions at the LR size see an edge-padded image."""
    i = torch.arange(in_len, dtype=out_len.dtype, device=out_len.device)[None, :, None]  # output index
    j = torch.arange(in_len, dtype=out_len.dtype, device=out_len.device)[None, None, :]  # input index
    length = out_len[:, :, None]  # [N, 1, 1]
    step = in_len / length  # input samples per output sample (>= 1)
    i = torch.minimum(i, length - 1)
    weights = _cubic((j + 0.5 - (i + 0.5) * step) / step)
    return weights / weights.sum(dim=2, keepdim=True)


def resample_to_lr(canvas: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """[N, C, 112, 96] -> [N, C, 112, 96] with item n resampled to its own LR size in the top-left corner."""
    with torch.autocast(canvas.device.type, enabled=False):  # fp32 even under bf16 autocast: these are pixels
        h, w = lr_size(scale.float())
        rows = resample_matrix(h, FACE_HEIGHT)  # [N, 112, 112]
        cols = resample_matrix(w, FACE_WIDTH)  # [N, 96, 96]
        return torch.matmul(torch.matmul(rows[:, None], canvas.float()), cols[:, None].transpose(2, 3))


def block_phase() -> torch.Tensor:
    """[1, 2, 112, 96]: row and column position inside the 8x8 block grid of a codec, in [-1, 1]."""
    ys = (torch.arange(FACE_HEIGHT) % 8).float() / 3.5 - 1
    xs = (torch.arange(FACE_WIDTH) % 8).float() / 3.5 - 1
    return torch.stack([ys[:, None].expand(FACE_HEIGHT, FACE_WIDTH), xs[None, :].expand(FACE_HEIGHT, FACE_WIDTH)])[None]


class SensorStage(nn.Module):
    """The camera after sampling, at the LR size: a colour transform from (z, scale) — white balance, haze,
    contrast, greyscale — then a residual from a small conv net that reads the image, per-pixel noise, the
    scale and the block phase, modulated by (z, scale). Both start as the identity."""

    NOISE_CHANNELS = 3

    def __init__(self, cfg: MRGANConfig):
        super().__init__()
        w = cfg.sensor_width
        cond_dim = cfg.z_dim + 1
        self.colour = nn.Sequential(nn.Linear(cond_dim, 32), _act(), nn.Linear(32, 12))
        nn.init.zeros_(self.colour[-1].weight)
        nn.init.zeros_(self.colour[-1].bias)
        self.register_buffer("phase", block_phase(), persistent=False)
        self.stem = nn.Conv2d(3 + self.NOISE_CHANNELS + 1 + 2, w, 3, padding=1)
        self.film = nn.Linear(cond_dim, 2 * w)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(w, w, 3, padding=1), _act(), nn.Conv2d(w, w, 3, padding=1))
            for _ in range(cfg.sensor_blocks))
        self.out = nn.Conv2d(w, 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.act = _act()

    def forward(self, lr: torch.Tensor, z: torch.Tensor, scale: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        cond = torch.cat([z, scale], 1)
        params = self.colour(cond)
        matrix = params[:, :9].unflatten(1, (3, 3)) + torch.eye(3, device=lr.device, dtype=params.dtype)
        offset = params[:, 9:]
        lr = torch.einsum("nij,njhw->nihw", matrix, lr) + offset[:, :, None, None]
        phase = self.phase.expand(lr.shape[0], -1, -1, -1)
        h = self.stem(torch.cat([lr, noise, constant_channel(scale, lr), phase], 1))
        gamma, beta = self.film(cond)[:, :, None, None].chunk(2, dim=1)
        h = self.act(h * (1 + gamma) + beta)
        for block in self.blocks:
            h = self.act(h + block(h))
        return lr + self.out(h)


class MRGANGenerator(nn.Module):
    """The full MR-GAN generator: global generator, then each local part's patch (global crop + local residual)
    blended in at its region with a feathered mask (the HR-canvas `canvas`), then each item resampled to its own
    LR size and, unless ablated, the sensor stage (`lr`)."""

    def __init__(self, cfg: MRGANConfig):
        super().__init__()
        self.z_dim = cfg.z_dim
        self.global_generator = GlobalGenerator(cfg)
        self.local_generators = nn.ModuleDict(
            {r.name: LocalGenerator(r, cfg) for r in REGIONS} if cfg.use_local_generators else {}
        )
        for r in REGIONS:
            if cfg.use_local_generators:
                self.register_buffer(f"mask_{r.name}", feathered_mask(r, cfg.local_feather), persistent=False)
        self.sensor = SensorStage(cfg) if cfg.use_sensor_stage else None

    def forward(self, face: torch.Tensor, z: torch.Tensor, scale: torch.Tensor,
                noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        result = self.global_generator(face, z, scale)
        out = result.pop("lr_canvas")
        for name, local in self.local_generators.items():
            region = local.region
            mask = getattr(self, f"mask_{name}")
            rows, cols = region.slices
            patch = (out[:, :, rows, cols] + local(face, z, scale)).clamp(-1.0, 1.0)
            patch = F.pad(patch, (region.left, FACE_WIDTH - region.left - region.width,
                                  region.top, FACE_HEIGHT - region.top - region.height))
            out = mask * patch + (1 - mask) * out
        result["canvas"] = out
        lr = result["lr_optics"] = resample_to_lr(out, scale)
        if self.sensor is not None:
            if noise is None:
                raise ValueError("this generator has a sensor stage: pass noise [N, 3, 112, 96]")
            lr = self.sensor(lr, z, scale, noise.to(lr.dtype))
        result["lr"] = lr
        return result


class LRGenerator(nn.Module):
    """Export wrapper: (face, z, scale, noise) -> lr only, clamped to [-1, 1] (the ONNX contract)."""

    def __init__(self, generator: MRGANGenerator):
        super().__init__()
        self.generator = generator

    def forward(self, face: torch.Tensor, z: torch.Tensor, scale: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.generator(face, z, scale, noise)["lr"].clamp(-1.0, 1.0)


class PatchDiscriminator(nn.Module):
    """PatchGAN: strided 4x4 convs with InstanceNorm and LeakyReLU, one logit per overlapping patch."""

    def __init__(self, width: int, strided_layers: int, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, stride=2, padding=1), _act()]
        c = width
        for _ in range(strided_layers - 1):
            layers += [nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), nn.InstanceNorm2d(2 * c, affine=True), _act()]
            c *= 2
        layers += [nn.Conv2d(c, c, 3, padding=1), nn.InstanceNorm2d(c, affine=True), _act(), nn.Conv2d(c, 1, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LocalDiscriminator(nn.Module):
    """Three conv layers on a region crop (eyes, nose or mouth)."""

    def __init__(self, region: Region, width: int):
        super().__init__()
        self.region = region
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 4, stride=2, padding=1), _act(),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.InstanceNorm2d(2 * width, affine=True), _act(),
            nn.Conv2d(2 * width, 1, 3, padding=1),
        )

    def forward(self, canvas: torch.Tensor) -> torch.Tensor:
        rows, cols = self.region.slices
        return self.net(canvas[:, :, rows, cols])


class MRGANDiscriminators(nn.Module):
    """The global PatchGAN discriminator and, unless ablated, the three local discriminators. Returns name -> logits."""

    def __init__(self, cfg: MRGANConfig):
        super().__init__()
        self.global_discriminator = PatchDiscriminator(cfg.disc_width, cfg.disc_layers)
        self.local_discriminators = nn.ModuleDict(
            {r.name: LocalDiscriminator(r, cfg.local_disc_width) for r in REGIONS} if cfg.use_local_discriminators else {}
        )

    def forward(self, canvas: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = {"global": self.global_discriminator(canvas)}
        for name, d in self.local_discriminators.items():
            logits[name] = d(canvas)
        return logits


def build_generator(cfg: MRGANConfig) -> MRGANGenerator:
    return MRGANGenerator(cfg)


def build_discriminators(cfg: MRGANConfig) -> MRGANDiscriminators:
    return MRGANDiscriminators(cfg)


def config_from_dict(d: dict) -> MRGANConfig:
    """An MRGANConfig from a checkpoint's `config` (asdict); unknown keys from newer code are ignored."""
    known = MRGANConfig.__dataclass_fields__
    return MRGANConfig(**{k: v for k, v in d.items() if k in known})


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
