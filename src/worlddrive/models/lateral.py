"""`LateralHead`: where to drive (the plan's path) from the current camera frame, speed and command only, never the
ego history; the action expert keeps how far along it to go. `along_path` joins the two.

Why: a policy cloned with its past poses steers from them (on d40 val, straightening the past poses doubled the
builtin's +4 s lateral error, a black camera barely moved it), and driving straight is a fixed point of copying one's
own motion, so in closed loop it never corrects an offset and leaves the road on the first bend (results/README.md).
The action expert keeps the longitudinal half, where speed and history are the right cues.

Why a path and not (y, yaw) per time step: the head learns the expert's pace, the action expert may drive slower (the
builtin does, at about half the expert's progress). A y taken at +4 s of the expert's pace and put beside an x of half
that distance bends twice as sharply; a path walked at the action expert's own distances does not.

Why a path at fixed distances (`lateral_target="arc"`) and not at the expert's times: near a stop line the futures
of one picture mix a car that stops short and one that drives off into the turn. Averaged waypoint by waypoint in
time, they make a path that is short and bent (intersection_stop seed 217, session 23's builtin at 2.9 m/s: its 4 s
waypoint 0.4 m behind the car and 0.9 m to the side), and pure pursuit steers into the kerb. At fixed distances along
the path the two agree where both go and a standing future adds nothing.

The arc head also gives the expert's pace apart, as a fourth column: how far it goes by each waypoint's time,
which the paces "path" and "cautious" read (the time head's pace is its own path's length).

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
ARC_MIN_SPEED = 2.0  # m/s: the arc path's stations are at max(speed, this) x 0.5 ... 4 s, 1 ... 8 m when standing
# m, m, rad, m: one unit of the arc head's output about its station's straight-on pose (s, 0, 0) and, last, about
# the distance the expert covers by the waypoint's time (its pace), taken from the station s
ARC_SCALE = (1.0, 1.0, 0.1, 2.0)


class LateralHead(nn.Module):
    """Current frame (B, 3, H, W) uint8 + motion (speed, acceleration[, speed limit]) + command -> normalised
    (x, y, yaw) per waypoint, or with lateral_target "arc" (x, y, yaw, distance) offsets per station (`arc_path`).

    MSE, not L1: L1 fits the median, and most futures go straight, so an L1 lateral output without the history
    stayed at ~0 for every sample (results/README.md, "Recovery data"); the mean is pulled by every bend.
    """

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.image_size = config.image_size
        self.waypoints = config.waypoints
        self.outputs = len(ARC_SCALE) if config.lateral_target == "arc" else 3
        layers: list[nn.Module] = []
        for i in range(4):  # 64 x 128 -> 4 x 8
            layers += [nn.Conv2d(3 if i == 0 else CHANNELS, CHANNELS, 3, stride=2, padding=1), nn.GELU()]
        self.conv = nn.Sequential(*layers)
        h, w = (-(-side // 16) for side in config.image_size)  # each stride-2 conv rounds up
        self.command = nn.Embedding(len(COMMANDS), 64)
        self.mlp = nn.Sequential(
            nn.Linear(CHANNELS * h * w + 64 + config.motion_features, HIDDEN),
            nn.GELU(),
            nn.Linear(HIDDEN, self.outputs * config.waypoints),
        )

    def forward(self, frame: torch.Tensor, motion: torch.Tensor, command: torch.Tensor) -> torch.Tensor:
        """frame (B, 3, H, W) uint8, motion (B, M) from `WorldDrivePolicy._motion`, command (B,) -> (B, W, 3 or 4)."""
        z = self.conv(network_input(frame, self.image_size)).flatten(1)  # (B, CHANNELS * h * w): position kept
        return self.mlp(torch.cat([z, self.command(command), motion], dim=1)).view(-1, self.waypoints, self.outputs)

    @staticmethod
    def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred and normalised target trajectory (B, W, 3) -> MSE."""
        return F.mse_loss(pred, target)


def arc_stations(speed: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """Speeds (B,) and waypoint times (W,) -> (B, W) distances along the path of an arc head's waypoints."""
    return speed.float().clamp_min(ARC_MIN_SPEED)[:, None] * times


def arc_path(out: torch.Tensor, stations: torch.Tensor) -> torch.Tensor:
    """An arc head's output (B, W, 4) -> the path (B, W, 4) in metres / radians: the pose at each station, offset
    from (s, 0, 0), and the distance covered by that waypoint's time, offset from s."""
    zero = torch.zeros_like(stations)
    return torch.stack([stations, zero, zero, stations], dim=-1) + out * out.new_tensor(ARC_SCALE)


def covered(trajectory: torch.Tensor) -> torch.Tensor:
    """A trajectory (B, W, 3) in metres -> (B, W) the distance along it from the ego to each waypoint."""
    points = F.pad(trajectory[..., :2], (0, 0, 1, 0))  # (B, W + 1, 2) the ego first
    return (points[:, 1:] - points[:, :-1]).norm(dim=-1).cumsum(-1)


def at_stations(trajectory: torch.Tensor, stations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A trajectory (B, W, 3) in metres -> its poses (B, W, 3) at distances `stations` (B, W) along it, and (B, W)
    whether it gets that far."""
    straight = torch.stack([stations, torch.zeros_like(stations), torch.zeros_like(stations)], dim=-1)[:, None]
    poses = along_path(straight, trajectory)[:, 0]  # a straight plan walks its distances along the trajectory
    return poses, stations <= covered(trajectory)[:, -1:]


def arc_loss(out: torch.Tensor, trajectory: torch.Tensor, stations: torch.Tensor) -> torch.Tensor:
    """MSE in ARC_SCALE units between an arc head's output (B, W, 4) and the expert's trajectory (B, W, 3): poses at
    the stations it reaches, distances at every waypoint."""
    target, reached = at_stations(trajectory, stations)
    target = torch.cat([target, covered(trajectory)[..., None]], -1)  # (B, W, 4) the distance by each waypoint's time
    err = ((arc_path(out, stations) - target) / out.new_tensor(ARC_SCALE)) ** 2
    pose = (err[..., :3].sum(-1) * reached).sum() / (3 * reached.sum()).clamp_min(1)
    return pose + err[..., 3].mean()


def along_path(plan: torch.Tensor, path: torch.Tensor, pace: str = "action") -> torch.Tensor:
    """Waypoints (B, K, W, 3) moved onto `path` (B, W, 3), both in metres / radians: each goes as far along the path
    as it went along its own polyline from the ego (steps against its heading count back); past the path's end they
    go on along its last heading. `pace` (PolicyConfig.pace): "path" goes as far as the path's own waypoint of the
    same time instead, "cautious" the lesser of the two distances. An arc head's path (B, W, 4) says in its last
    column how far it goes by each waypoint's time (`arc_path`)."""
    B, K, W, _ = plan.shape
    pace_column = path[..., 3] if path.shape[-1] == 4 else None  # (B, W)
    path = path[..., :3]
    origin = path.new_zeros(B, 1, 3)
    points = torch.cat([origin, path], dim=1)  # (B, W + 1, 3), the ego first
    seg = points[:, 1:, :2] - points[:, :-1, :2]  # (B, W, 2)
    length = seg.norm(dim=-1)  # (B, W)
    along = F.pad(length.cumsum(-1), (1, 0))  # (B, W + 1) arc length at each point
    own = torch.cat([origin[:, None].expand(B, K, 1, 3), plan], dim=2)  # (B, K, W + 1, 3)
    step = own[..., 1:, :2] - own[..., :-1, :2]  # (B, K, W, 2)
    backwards = (step * torch.stack([own[..., :-1, 2].cos(), own[..., :-1, 2].sin()], dim=-1)).sum(-1) < 0
    # signed: a standing plan's jitter back and forth cancels instead of adding up to a creep forward
    travelled = torch.where(backwards, -1.0, 1.0).mul(step.norm(dim=-1)).cumsum(-1).clamp_min(0)  # (B, K, W)
    own = along[:, 1:] if pace_column is None else pace_column.clamp_min(0)  # (B, W) the path's own pace
    own_pace = own[:, None].expand(B, K, W)
    if pace == "path":
        travelled = own_pace
    elif pace == "cautious":
        travelled = torch.minimum(travelled, own_pace)
    elif pace != "action":
        raise ValueError(f"pace {pace!r}, expected 'action', 'cautious' or 'path'")
    sorted_along = along[:, None].expand(B, K, W + 1).contiguous()
    j = (torch.searchsorted(sorted_along, travelled.contiguous()) - 1).clamp(0, W - 1)  # (B, K, W) segment index
    start = points[:, None].expand(B, K, W + 1, 3).gather(2, j[..., None].expand(B, K, W, 3))
    end = points[:, None].expand(B, K, W + 1, 3).gather(2, (j + 1)[..., None].expand(B, K, W, 3))
    seg_len = length[:, None].expand(B, K, W).gather(2, j)
    t = ((travelled - sorted_along.gather(2, j)) / seg_len.clamp_min(1e-6)).clamp(0, 1)[..., None]
    inside = start + t * (end - start)  # (B, K, W, 3)
    last = points[:, -1][:, None, None]  # (B, 1, 1, 3)
    beyond = (travelled - along[:, -1][:, None, None]).clamp_min(0)[..., None]  # (B, K, W, 1)
    heading = torch.stack([last[..., 2].cos(), last[..., 2].sin()], dim=-1)  # (B, 1, 1, 2)
    past_end = torch.cat([last[..., :2] + beyond * heading, last[..., 2:].expand(B, K, W, 1)], dim=-1)
    return torch.where(beyond > 0, past_end, inside)
