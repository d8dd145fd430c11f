"""Camera frames -> visual tokens: a conv stem cuts each frame into patch tokens, transformer blocks mix them.

Token budget: only the current frame keeps its full patch grid (h x w tokens), the part the world-model heads read
back as a grid. Past frames matter for motion (is that pedestrian walking?), not detail, so their grids are
average-pooled by `past_pool` in both directions, which keeps the sequence, and with it the cost of every backbone
layer, close to a single frame's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from worlddrive.models.backbone import Block
from worlddrive.models.config import PolicyConfig


def network_input(frames: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """uint8 frames (N, 3, H, W) -> float (N, 3, *image_size) in [-1, 1], area-resized when the sizes differ."""
    x = frames.float() / 127.5 - 1.0
    if tuple(x.shape[-2:]) != image_size:
        x = F.interpolate(x, size=image_size, mode="area")
    return x


class VisionEncoder(nn.Module):
    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config
        d, c = config.d_model, config.d_model // 4
        # two stride-2 3x3 convs see local edges cheaply, then a patch_size/4 "patchify" conv makes the tokens
        self.stem = nn.Sequential(
            nn.Conv2d(3, c, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(2 * c, d, config.patch_size // 4, stride=config.patch_size // 4),
        )
        # channels_last (NHWC): oneDNN runs the stem's forward + backward ~15 % faster on it than on NCHW (1 thread,
        # small preset, batch 16), and its output is then already in token order (a view, no copy)
        self.stem.to(memory_format=torch.channels_last)
        h, w = config.grid
        self.pos = nn.Parameter(0.02 * torch.randn(1, d, h, w))  # patch position, shared by all frames
        self.time = nn.Parameter(0.02 * torch.randn(config.past_frames + 1, 1, d))  # frame age, oldest first
        self.blocks = nn.ModuleList(Block(d, config.n_heads, config.dropout) for _ in range(config.vision_layers))
        self.ln_f = nn.LayerNorm(d)

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames (N, 3, H, W) -> patch features with their positions (N, D, h, w), one frame at a time: a
        driving policy embeds each frame once and reuses it while it stays in the history (`forward(embedded=...)`)."""
        x = network_input(frames, self.config.image_size)  # (N, 3, h, w) in [-1, 1]
        return self.stem(x.contiguous(memory_format=torch.channels_last)) + self.pos

    def forward(self, camera: torch.Tensor | None = None, embedded: torch.Tensor | None = None) -> torch.Tensor:
        """camera (B, T, 3, H, W) uint8, oldest frame first, T = past_frames + 1, or its frames already `embed`ded
        (B, T, D, h, w) -> tokens (B, Nv, D).

        Token order: each past frame's pooled grid, oldest first, then the current frame's grid, row-major.
        """
        if embedded is None:
            embedded = self.embed(camera.flatten(0, 1)).unflatten(0, camera.shape[:2])
        B, T = embedded.shape[:2]
        expected = self.config.past_frames + 1
        if expected != T:
            raise ValueError(f"camera has {T} frames, the config expects past_frames + 1 = {expected}")
        x = embedded  # (B, T, D, h, w)
        past = F.avg_pool2d(x[:, :-1].flatten(0, 1), self.config.past_pool)  # (B*(T-1), D, hp, wp)
        past = past.unflatten(0, (B, T - 1)).flatten(3).transpose(2, 3) + self.time[:-1]  # (B, T-1, hp*wp, D)
        current = x[:, -1].flatten(2).transpose(1, 2) + self.time[-1]  # (B, h*w, D)
        x = torch.cat([past.flatten(1, 2), current], dim=1)  # (B, Nv, D)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)
