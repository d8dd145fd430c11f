"""`LightHead`: the colour of the light ahead now, from the current camera frame at the camera's full resolution.

Why its own CNN, at full resolution: at the network's 64 x 128 a lamp 30 m away is about one pixel, and the shared
vision tokens barely tell red from green there (a probe on a trained policy's frozen token grid: AUROC 0.65-0.82 at
10-45 m from the line). The bev head's light forecast cannot stand in: it is conditioned on the ego's plan and
learned from the expert that a stopping plan means red (P(red) 0.97 for a standing candidate whatever the colour).
A CNN like this one on 128 x 256 frames, trained for 6 minutes: AUROC 0.94-0.99 at 10-45 m (results/README.md,
session 22). Global max pooling: a lamp is a few pixels anywhere in the frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LIGHTS = ("none", "green", "yellow", "red")  # light classes: the dataset's lights (-1 ... 2) + 1
CHANNELS = (24, 32, 48, 64)  # the first conv keeps full resolution, each next one halves it


class LightHead(nn.Module):
    """Current frame (B, 3, H, W) uint8, any size -> logits (B, 4) over `LIGHTS` for the light ahead now."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, c in enumerate(CHANNELS):
            layers += [nn.Conv2d(CHANNELS[i - 1] if i else 3, c, 3, stride=2 if i else 1, padding=1), nn.GELU()]
        self.net = nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(CHANNELS[-1], len(LIGHTS)))

    def forward(self, frame: torch.Tensor) -> torch.Tensor:
        return self.net(frame.float() / 127.5 - 1.0)

    @staticmethod
    def loss(logits: torch.Tensor, lights: torch.Tensor) -> torch.Tensor:
        """logits (B, 4), the dataset's lights (B, FUTURE + 1) (-1 ... 2, now first) -> cross-entropy on now."""
        return F.cross_entropy(logits, lights[:, 0].long() + 1)
