"""`LateralHead`: the lateral half of the plan (y and yaw of every waypoint) from the camera, speed and command only.

Why a head that never sees the ego history: a policy cloned with its past poses steers from them (on d40 val,
straightening the past poses doubled the builtin's +4 s lateral error, a black camera barely moved it), and driving
straight is a fixed point of copying one's own motion, so in closed loop it never corrects an offset and leaves the
road on the first bend (results/README.md). This head reads the tokens straight from the vision encoder, before the
backbone mixes in the ego state, so the only route to the lateral plan is the image; the action expert keeps the
longitudinal half, where speed and history are the right cues.

Measured (results/README.md, "A camera-only lateral head"): on `small` (64 x 128 frames) the camera tokens do not
carry the road's shape well enough: its +4 s lateral explains R² ~0.25 on d40 val, and fine-tuned from the builtin
it left the road in 46 of 48 training-seed episodes. Hence off by default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from worlddrive.data.record import COMMANDS
from worlddrive.models.backbone import Block
from worlddrive.models.config import PolicyConfig


class LateralHead(nn.Module):
    """Visual tokens + (speed, acceleration) + command -> normalised (y, yaw) of each waypoint, MSE-trained.

    MSE, not L1: L1 fits the median, and most futures go straight, so an L1 lateral output without the history
    stayed at ~0 for every sample (results/README.md, "Recovery data"); the mean is pulled by every bend.
    """

    def __init__(self, config: PolicyConfig):
        super().__init__()
        d = config.d_model
        self.motion = nn.Linear(2, d)
        self.command = nn.Embedding(len(COMMANDS), d)
        self.queries = nn.Parameter(0.02 * torch.randn(config.waypoints, d))
        self.blocks = nn.ModuleList(Block(d, config.n_heads, config.dropout) for _ in range(config.action_layers))
        self.ln_f = nn.LayerNorm(d)
        self.out = nn.Linear(d, 2)

    def forward(self, visual: torch.Tensor, motion: torch.Tensor, command: torch.Tensor) -> torch.Tensor:
        """visual (B, Nv, D) from the vision encoder, motion (B, 2) normalised speed and acceleration, command (B,)
        -> (B, W, 2) normalised (y, yaw)."""
        state = self.motion(motion) + self.command(command)  # (B, D)
        x = torch.cat([visual, state[:, None], self.queries + state[:, None]], dim=1)  # (B, Nv + 1 + W, D)
        for block in self.blocks:
            x = block(x)
        return self.out(self.ln_f(x[:, -len(self.queries) :]))

    @staticmethod
    def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred (B, W, 2), normalised target trajectory (B, W, 3) -> MSE on its (y, yaw)."""
        return F.mse_loss(pred, target[..., 1:])
