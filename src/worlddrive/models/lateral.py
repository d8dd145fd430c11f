"""`LateralHead`: the lateral half of the plan (y and yaw of every waypoint) from the current camera frame, speed and
command only, never the ego history.

Why: a policy cloned with its past poses steers from them (on d40 val, straightening the past poses doubled the
builtin's +4 s lateral error, a black camera barely moved it), and driving straight is a fixed point of copying one's
own motion, so in closed loop it never corrects an offset and leaves the road on the first bend (results/README.md).
The action expert keeps the longitudinal half, where speed and history are the right cues.

Why its own small CNN and not the shared vision tokens: the road's shape is in the pixels (a CNN like this one,
trained on 6000 d40 frames at 64 x 128, predicted the +4 s lateral offset of val episodes with R² 0.87), but not
in the builtin's vision tokens: a transformer head reading them reached R² ~0.25 and left the road in 46 of 48
training-seed episodes (results/README.md, "A lateral head that steers from the camera"). Strided convolutions
flattened into a linear layer keep where in the image the road goes, which is what steering needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from worlddrive.data.record import COMMANDS
from worlddrive.models.config import PolicyConfig
from worlddrive.models.vision import network_input

CHANNELS = 32
HIDDEN = 256


class LateralHead(nn.Module):
    """Current frame (B, 3, H, W) uint8 + (speed, acceleration) + command -> normalised (y, yaw) per waypoint.

    MSE, not L1: L1 fits the median, and most futures go straight, so an L1 lateral output without the history
    stayed at ~0 for every sample (results/README.md, "Recovery data"); the mean is pulled by every bend.
    """

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.image_size = config.image_size
        self.waypoints = config.waypoints
        layers: list[nn.Module] = []
        for i in range(4):  # 64 x 128 -> 4 x 8
            layers += [nn.Conv2d(3 if i == 0 else CHANNELS, CHANNELS, 3, stride=2, padding=1), nn.GELU()]
        self.conv = nn.Sequential(*layers)
        h, w = (-(-side // 16) for side in config.image_size)  # each stride-2 conv rounds up
        self.command = nn.Embedding(len(COMMANDS), 64)
        self.mlp = nn.Sequential(
            nn.Linear(CHANNELS * h * w + 64 + 2, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, 2 * config.waypoints)
        )

    def forward(self, frame: torch.Tensor, motion: torch.Tensor, command: torch.Tensor) -> torch.Tensor:
        """frame (B, 3, H, W) uint8, motion (B, 2) normalised speed and acceleration, command (B,) -> (B, W, 2)."""
        z = self.conv(network_input(frame, self.image_size)).flatten(1)  # (B, CHANNELS * h * w): position kept
        return self.mlp(torch.cat([z, self.command(command), motion], dim=1)).view(-1, self.waypoints, 2)

    @staticmethod
    def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred (B, W, 2), normalised target trajectory (B, W, 3) -> MSE on its (y, yaw)."""
        return F.mse_loss(pred, target[..., 1:])
