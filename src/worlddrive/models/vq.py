"""VQ image tokenizer: a camera frame <-> a grid of discrete codes (DriveVLA-W0's VQ world-model path).

The `vq` world-model head learns to predict the codes of a future frame; this tokenizer makes its targets. A small
conv encoder downsamples a (3, 128, 256) frame by 8 to a 16 x 32 grid, `vector_quantize_pytorch.VectorQuantize`
snaps each cell to one of `codebook_size` codes, and a mirrored decoder draws the frame back. It is trained alone
(`train_vq_tokenizer`), saved as `vq.safetensors` + `vq_config.json`, and frozen while the policy trains.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader
from vector_quantize_pytorch import VectorQuantize

from worlddrive.data.dataset import WorldDriveDataset
from worlddrive.data.record import PAST
from worlddrive.fileio import write_json_atomic

WEIGHTS, CONFIG = "vq.safetensors", "vq_config.json"


@dataclass(frozen=True)
class VQConfig:
    """Sizes of a tokenizer; saved beside its weights, which only fit the config they were made with."""

    image_hw: tuple[int, int] = (128, 256)
    patch: int = 4  # pixels folded into channels before the first conv (space-to-depth): no full-resolution convs
    channels: tuple[int, ...] = (32, 64)  # a stage each, all but the first downsampling by 2
    codebook_size: int = 1024
    codebook_dim: int = 32  # codes are looked up in this low dimension, which keeps more of them in use
    commitment_weight: float = 0.25

    def __post_init__(self) -> None:
        if any(n % self.stride for n in self.image_hw):
            raise ValueError(f"image_hw {self.image_hw} must be divisible by the stride {self.stride}")
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be at least 2, got {self.codebook_size}")

    @property
    def stride(self) -> int:
        return self.patch * 2 ** (len(self.channels) - 1)

    @property
    def code_hw(self) -> tuple[int, int]:
        return self.image_hw[0] // self.stride, self.image_hw[1] // self.stride

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))  # tuples as lists, as in the JSON file

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VQConfig:
        """The config of a JSON dict whose keys must be exactly this dataclass's fields."""
        names = {f.name for f in fields(cls)}
        for key in d.keys() - names:
            raise ValueError(f"unknown VQ config key {key!r}")
        for key in names - d.keys():
            raise ValueError(f"VQ config key {key!r} is missing")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, c), c)


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _norm(c), nn.GELU(), nn.Conv2d(c, c, 3, padding=1), _norm(c), nn.GELU(), nn.Conv2d(c, c, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def encoder(patch: int, channels: tuple[int, ...]) -> nn.Sequential:
    """(B, 3, H, W) in [-1, 1] -> (B, C, H / stride, W / stride): space-to-depth, then per stage a conv (stride 2
    after the first) and a residual block."""
    layers: list[nn.Module] = [nn.PixelUnshuffle(patch)]
    c_in = 3 * patch**2
    for i, c in enumerate(channels):
        conv = nn.Conv2d(c_in, c, 3, padding=1) if i == 0 else nn.Conv2d(c_in, c, 4, stride=2, padding=1)
        layers += [conv, ResBlock(c)]
        c_in = c
    return nn.Sequential(*layers, _norm(c_in), nn.GELU(), nn.Conv2d(c_in, c_in, 1))


def decoder(patch: int, channels: tuple[int, ...]) -> nn.Sequential:
    """(B, C, h, w) -> (B, 3, h * stride, w * stride), the encoder mirrored with nearest upsampling."""
    c_in = channels[-1]
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_in, 3, padding=1), ResBlock(c_in)]
    for c in reversed(channels[:-1]):
        layers += [nn.Upsample(scale_factor=2.0), nn.Conv2d(c_in, c, 3, padding=1), ResBlock(c)]
        c_in = c
    out = nn.Conv2d(c_in, 3 * patch**2, 3, padding=1)
    return nn.Sequential(*layers, _norm(c_in), nn.GELU(), out, nn.PixelShuffle(patch))


class VQTokenizer(nn.Module):
    """Frames <-> codes. `forward` is the training path; `encode` and `decode` never change the codebook (except
    that an untrained one is k-means initialised on the first frames it sees)."""

    def __init__(self, config: VQConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or VQConfig()
        self.encoder = encoder(c.patch, c.channels)
        self.decoder = decoder(c.patch, c.channels)
        self.quantizer = VectorQuantize(
            dim=c.channels[-1],
            codebook_size=c.codebook_size,
            codebook_dim=c.codebook_dim,
            kmeans_init=True,  # codes start on the first batch's features, not on random points
            threshold_ema_dead_code=2,  # unused codes are moved onto features of the batch
            commitment_weight=c.commitment_weight,
        )

    def _check(self, images: torch.Tensor) -> None:
        h, w = self.config.image_hw
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, h, w):
            raise ValueError(f"expected frames (B, 3, {h}, {w}), got {tuple(images.shape)}")

    def _quantize(self, z: torch.Tensor, freeze: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C, h, w) -> quantized (B, C, h, w), codes (B, h, w), commitment loss (); `freeze` stops the
        codebook's updates (it is not a parameter: in training it follows the features by moving averages)."""
        B, _, h, w = z.shape
        q, codes, loss = self.quantizer(z.flatten(2).transpose(1, 2), freeze_codebook=freeze)  # (B, h * w, C), ...
        return q.transpose(1, 2).reshape(B, -1, h, w), codes.reshape(B, h, w), loss

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) float in [0, 1] -> reconstruction (B, 3, H, W) unclamped, codes (B, h, w), commitment ()."""
        self._check(images)
        q, codes, commit = self._quantize(self.encoder(images * 2 - 1), freeze=not self.training)
        return self.decoder(q), codes, commit

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 -> codes (B, h, w) long."""
        self._check(frames)
        return self._quantize(self.encoder(frames.float() / 127.5 - 1), freeze=True)[1].long()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) long -> frames (B, 3, H, W) float in [0, 1]."""
        B, h, w = codes.shape
        q = self.quantizer.get_output_from_indices(codes.flatten(1))  # (B, h * w, C)
        return self.decoder(q.transpose(1, 2).reshape(B, -1, h, w)).clamp(0, 1)

    def save(self, directory: str | Path) -> None:
        """vq.safetensors (with the config in its metadata) and vq_config.json, each written atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = self.config.to_dict()
        tensors = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        tmp = directory / (WEIGHTS + ".tmp")
        save_file(tensors, tmp, metadata={"config": json.dumps(config)})
        os.replace(tmp, directory / WEIGHTS)
        write_json_atomic(directory / CONFIG, config)

    @classmethod
    def load(cls, directory: str | Path) -> VQTokenizer:
        """A saved tokenizer in eval mode; refuses a vq_config.json that differs from the weights' own config."""
        directory = Path(directory)
        config = json.loads((directory / CONFIG).read_text())
        with safe_open(directory / WEIGHTS, "pt") as f:
            saved = json.loads((f.metadata() or {}).get("config", "{}"))
        for key in sorted(config.keys() | saved.keys()):
            if config.get(key) != saved.get(key):
                raise ValueError(
                    f"{directory / CONFIG}: {key} = {config.get(key)!r} but {WEIGHTS} was saved with {saved.get(key)!r}"
                )
        model = cls(VQConfig.from_dict(config))
        model.load_state_dict(load_file(directory / WEIGHTS))
        return model.eval()


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of images in [0, 1]: (..., C, H, W) -> (...); inf where they are equal."""
    mse = (a.float() - b.float()).square().mean((-3, -2, -1))
    return -10 * torch.log10(mse)


def _gaussian_window(size: int, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()  # (size,)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004: 11 x 11 Gaussian window, sigma 1.5, no padding) of images in
    [0, 1]: (..., C, H, W) -> (...), the mean over channels and window positions; 1 where they are equal."""
    lead, (H, W) = a.shape[:-3], a.shape[-2:]
    x, y = a.float().reshape(1, -1, H, W), b.float().reshape(1, -1, H, W)  # (1, N * C, H, W)
    N, k = x.shape[1], min(11, H, W)
    g = _gaussian_window(k).to(x.device)
    rows, cols = g.view(1, 1, k, 1).expand(N, 1, k, 1), g.view(1, 1, 1, k).expand(N, 1, 1, k)

    def blur(t: torch.Tensor) -> torch.Tensor:  # separable, one group per image channel: fast on CPU
        return F.conv2d(F.conv2d(t, rows, groups=N), cols, groups=N)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))  # (1, N * C, H', W')
    return s.reshape(*lead, -1).mean(-1)


def _camera_frames(items: list[dict[str, Any]]) -> torch.Tensor:
    """Collate only the past, current and future camera frames of samples: (B, T, 3, H, W) uint8."""
    return torch.stack([torch.cat([item["camera"], item["future_camera"]]) for item in items])


@torch.no_grad()
def evaluate_tokenizer(model: VQTokenizer, dataset: WorldDriveDataset, batch_size: int = 16) -> dict[str, float]:
    """Round-trip PSNR / SSIM of the current frames of a dataset and the fraction of the codebook they use."""
    model.eval()
    scores, used = [], torch.zeros(model.config.codebook_size, dtype=torch.bool)
    for frames in DataLoader(dataset, batch_size, collate_fn=_camera_frames):
        frames = frames[:, PAST]  # (B, 3, H, W): the current frame
        codes = model.encode(frames)
        recon = model.decode(codes)
        target = frames.float() / 255
        scores.append(torch.stack([psnr(recon, target), ssim(recon, target)], -1))
        used[codes.flatten()] = True
    psnr_, ssim_ = torch.cat(scores).mean(0).tolist()
    return {"psnr": psnr_, "ssim": ssim_, "codebook_usage": used.float().mean().item()}


def train_vq_tokenizer(
    dataset_path: str | Path,
    out_dir: str | Path,
    steps: int,
    batch_size: int,
    seed: int,
    config: VQConfig | None = None,
    lr: float = 3e-3,
) -> dict[str, Any]:
    """Fit a tokenizer to a dataset's train split (AdamW, L1 reconstruction + commitment), save it to `out_dir` and
    return its metrics, with round-trip PSNR / SSIM on the val split."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    torch.manual_seed(seed)
    fields = WorldDriveDataset.fields_for(["vq"])
    train, val = (WorldDriveDataset(dataset_path, split, fields=fields) for split in ("train", "val"))
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"{dataset_path}: need samples in both splits, got {len(train)} train and {len(val)} val")
    model = VQTokenizer(config)
    found = tuple(train[0]["camera"].shape[-2:])
    if found != model.config.image_hw:
        raise ValueError(f"{dataset_path}: frames are {found}, the tokenizer's image_hw is {model.config.image_hw}")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    drop_last = len(train) >= batch_size
    loader = DataLoader(train, batch_size, True, drop_last=drop_last, collate_fn=_camera_frames, generator=generator)
    start, step, logs = time.perf_counter(), 0, {}
    model.train()
    while step < steps:
        for frames in loader:  # (B, T, 3, H, W)
            pick = torch.randint(frames.shape[1], (len(frames),), generator=generator)  # one frame per sample
            images = frames[torch.arange(len(frames)), pick].float() / 255  # (B, 3, H, W)
            recon, _, commit = model(images)
            l1 = F.l1_loss(recon, images)
            loss = l1 + commit
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            logs = {"l1": l1.item(), "commitment": commit.item()}
            if step == steps:
                break
    seconds = time.perf_counter() - start
    model.save(out_dir)
    metrics = {f"val_{k}": v for k, v in evaluate_tokenizer(model, val, batch_size).items()}
    train_logs = {f"train_{k}": v for k, v in logs.items()}
    return {"steps": steps, "train_seconds": seconds, **train_logs, **metrics, "out_dir": str(out_dir)}
