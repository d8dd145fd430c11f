"""World-model heads on the backbone's visual tokens: what the camera will see, and where things will be.

Every head reads `grid`, the backbone's hidden states for the current camera frame's visual tokens, (B, h, w, D).
They are switchable and combinable, as DriveVLA-W0 has both kinds (DESIGN.md "Model"):
- `vq`: the codes a frozen `VQTokenizer` gives the frame at +0.5 s, by cross-entropy over its codebook;
- `frame`: the frames at +0.5 ... +2 s by a small conv decoder, L1 against them at half resolution (64 x 128);
- `bev`: vehicle and pedestrian occupancy and the ego's light state at +0.5 ... +4 s, for a candidate ego trajectory.
  The future BEV rasters are ego-centric at the ego's future poses, so the head encodes the scene once into future
  feature maps in today's ego frame (`encode_scene`), and each candidate only warps them into its own future poses
  and applies a per-cell MLP modulated by its plan (`decode`): the planner scores many candidates for little.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from worlddrive.data.record import FUTURE
from worlddrive.models.config import PolicyConfig
from worlddrive.models.light import LIGHTS
from worlddrive.models.vq import VQTokenizer, psnr, ssim
from worlddrive.sim.camera import BEV_CHANNELS, BevConfig

HEADS = ("vq", "frame", "bev")
VQ_STEP = 0  # the vq head predicts future frame 0: +0.5 s
FRAME_STEPS = 4  # the frame head predicts future frames 0 ... 3: +0.5 ... +2 s
OCCUPANCY = ("vehicles", "pedestrians")  # BEV channels the bev head predicts
OCCUPANCY_CHANNELS = [BEV_CHANNELS.index(name) for name in OCCUPANCY]
REPORT_STEPS = {"1s": 1, "2s": 3}  # future index of the +1 s and +2 s metrics
POSE_SCALE = 10.0  # metres: trajectory coordinates are fed to the network divided by this


def _project(d_model: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, width))


def _to_map(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 1, 2)  # (B, h, w, C) -> (B, C, h, w)


class VQHead(nn.Module):
    """Grid -> logits over the tokenizer's codebook on its code grid: upsample the tokens bilinearly, add a learned
    embedding of the code cell (so the cells under one token can differ), mix neighbours, classify each cell."""

    def __init__(self, d_model: int, width: int, code_hw: tuple[int, int], codebook_size: int) -> None:
        super().__init__()
        self.code_hw = code_hw
        self.proj = _project(d_model, width)
        self.cell = nn.Parameter(torch.zeros(1, width, *code_hw))
        self.mix = nn.Sequential(nn.GELU(), nn.Conv2d(width, width, 3, padding=1), nn.GELU())
        self.classify = nn.Conv2d(width, codebook_size, 1)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(_to_map(self.proj(grid)), size=self.code_hw, mode="bilinear")  # (B, W, h', w')
        return self.classify(self.mix(x + self.cell))  # (B, V, h', w')


class FrameHead(nn.Module):
    """Grid -> frames at several horizons: a conv decoder (two 2x upsamplings, then a pixel shuffle to the full
    size, so no conv runs at full size) whose input is scaled and shifted by an embedding of the horizon (FiLM)."""

    def __init__(self, d_model: int, width: int, steps: int, frame_hw: tuple[int, int]) -> None:
        super().__init__()
        if any(n % 8 for n in frame_hw):
            raise ValueError(f"frame_hw {frame_hw} must be divisible by 8")
        self.start_hw = frame_hw[0] // 8, frame_hw[1] // 8
        self.proj = _project(d_model, width)
        self.horizon = nn.Parameter(torch.zeros(steps, 2, width))  # (T, scale / shift, W)
        half = max(width // 2, 8)
        self.decode = nn.Sequential(
            nn.Upsample(scale_factor=2.0),
            nn.Conv2d(width, width, 3, padding=1),
            nn.GELU(),
            nn.Upsample(scale_factor=2.0),
            nn.Conv2d(width, half, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(half, 3 * 4, 3, padding=1),
            nn.PixelShuffle(2),
            nn.Sigmoid(),
        )

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(_to_map(self.proj(grid)), size=self.start_hw, mode="bilinear")  # (B, W, h0, w0)
        scale, shift = self.horizon[:, 0, :, None, None], self.horizon[:, 1, :, None, None]  # (T, W, 1, 1)
        x = x[:, None] * (1 + scale) + shift  # (B, T, W, h0, w0)
        return self.decode(x.flatten(0, 1)).unflatten(0, x.shape[:2])  # (B, T, 3, Hf, Wf)


@dataclass(frozen=True)
class Raster:
    """Where the cells of a top-down raster lie in an ego frame (x forward, y left, metres): its top-left corner and
    cell size. Row i's centre is at x = top - (i + 0.5) * cell, column j's at y = left - (j + 0.5) * cell."""

    hw: tuple[int, int]
    cell: float
    top: float
    left: float

    @classmethod
    def of_bev(cls, bev: BevConfig, hw: tuple[int, int]) -> Raster:
        """The layout of `bev`'s rasters pooled to `hw`; the ego's centre is at pixel (int(ego_row * H), W // 2)."""
        mpp = bev.metres_per_px
        ego_row, ego_col = int(bev.ego_row * bev.height), bev.width // 2
        return cls(hw, mpp * bev.height / hw[0], (ego_row + 0.5) * mpp, (ego_col + 0.5) * mpp)

    def grown(self, ahead: int, side: int) -> Raster:
        """This raster with `ahead` more rows in front and `side` more columns on each side."""
        hw = (self.hw[0] + ahead, self.hw[1] + 2 * side)
        return replace(self, hw=hw, top=self.top + ahead * self.cell, left=self.left + side * self.cell)

    def centres(self) -> torch.Tensor:
        """(H, W, 2) x, y of the cell centres."""
        rows = self.top - (torch.arange(self.hw[0]) + 0.5) * self.cell
        cols = self.left - (torch.arange(self.hw[1]) + 0.5) * self.cell
        return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), -1)

    def normalized(self, xy: torch.Tensor) -> torch.Tensor:
        """(..., 2) x, y -> (..., 2) `grid_sample` coordinates (along W, along H) with align_corners=False."""
        u = 2 * (self.left - xy[..., 1]) / (self.cell * self.hw[1]) - 1
        v = 2 * (self.top - xy[..., 0]) / (self.cell * self.hw[0]) - 1
        return torch.stack([u, v], -1)


def warp(maps: torch.Tensor, src: Raster, poses: torch.Tensor, dst: Raster) -> torch.Tensor:
    """Resample maps laid out as `src` in the current ego frame into rasters laid out as `dst` in the frames of
    ego poses (x, y, yaw) given in the current frame: (N, C, Hs, Ws), (N, K, 3) -> (N, K, C, Hd, Wd); zero outside."""
    K = poses.shape[1]
    cos, sin = poses[..., 2].cos()[..., None, None], poses[..., 2].sin()[..., None, None]  # (N, K, 1, 1)
    pts = dst.centres().to(poses)  # (Hd, Wd, 2) in the pose's frame
    x = poses[..., 0, None, None] + cos * pts[..., 0] - sin * pts[..., 1]  # (N, K, Hd, Wd)
    y = poses[..., 1, None, None] + sin * pts[..., 0] + cos * pts[..., 1]
    grid = src.normalized(torch.stack([x, y], -1))  # (N, K, Hd, Wd, 2)
    # the K candidates are stacked along the output rows, so each map is sampled in place, never copied K times
    out = F.grid_sample(maps, grid.flatten(1, 2), align_corners=False)  # (N, C, K * Hd, Wd)
    return out.unflatten(2, (K, dst.hw[0])).transpose(1, 2)  # (N, K, C, Hd, Wd)


def reframe(maps: torch.Tensor, raster: Raster, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Maps laid out as `raster` in the frames of poses `src` -> the same maps in the frames of poses `dst`, both
    (N, 3) x, y, yaw in one common frame: (N, C, H, W) -> (N, C, H, W); zero where `src`'s raster does not reach.
    Lets a prediction made for one candidate be compared with rasters drawn at another (e.g. the true) trajectory."""
    cos, sin = src[:, 2].cos(), src[:, 2].sin()
    dx, dy = dst[:, 0] - src[:, 0], dst[:, 1] - src[:, 1]
    rel = torch.stack([cos * dx + sin * dy, cos * dy - sin * dx, dst[:, 2] - src[:, 2]], -1)  # (N, 3): dst in src
    return warp(maps, raster, rel[:, None], raster)[:, 0]


class Scene(NamedTuple):
    """What `BevHead.decode` needs of a frame: future feature maps in today's ego frame and a summary vector."""

    maps: torch.Tensor  # (B, T, C, Hs, Ws)
    summary: torch.Tensor  # (B, W)


class BevHead(nn.Module):
    """Future occupancy and light state for candidate ego trajectories.

    `encode_scene`: learned BEV queries cross-attend the grid, convs upsample them to T future feature maps on a
    raster that reaches further than the BEV (48 m more ahead, 16 m more to each side for the 64 m BEV), so the
    future views of a moving ego stay inside it; one more query gathers a summary of the scene (e.g. the light ahead).
    `decode`: per candidate, warp each step's map into the candidate's pose at that step, then FiLM with an embedding
    of (whole plan, step, scene summary) and a linear map per cell; the same embedding gives the light logits.
    """

    def __init__(self, d_model: int, width: int, occ: Raster, channels: int, steps: int = FUTURE) -> None:
        super().__init__()
        H, W = occ.hw
        if H % 16 or W % 16:
            raise ValueError(f"occupancy raster {occ.hw} must be divisible by 16")
        self.occ, self.scene = occ, occ.grown(ahead=3 * H // 4, side=W // 4)
        self.steps, self.channels = steps, channels
        self.query_hw = self.scene.hw[0] // 4, self.scene.hw[1] // 4
        self.proj = _project(d_model, width)
        self.queries = nn.Parameter(torch.randn(1 + self.query_hw[0] * self.query_hw[1], width) * 0.02)
        self.attend = nn.MultiheadAttention(width, num_heads=max(width // 32, 1), batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.lift = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1),
            nn.GELU(),
            nn.Upsample(scale_factor=2.0),
            nn.Conv2d(width, width, 3, padding=1),
            nn.GELU(),
            nn.Upsample(scale_factor=2.0),
            nn.Conv2d(width, steps * channels, 3, padding=1),
        )
        self.plan = nn.Sequential(nn.Linear(steps * 4, width), nn.GELU(), nn.Linear(width, width))
        self.step = nn.Parameter(torch.randn(steps, width))
        self.condition = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, 2 * channels + len(LIGHTS))
        )
        self.occupancy = nn.Linear(channels, len(OCCUPANCY))

    def encode_scene(self, grid: torch.Tensor) -> Scene:
        B = grid.shape[0]
        tokens = self.proj(grid).flatten(1, 2)  # (B, h * w, W)
        q = self.queries.expand(B, -1, -1)  # (B, 1 + Q, W)
        out = self.norm(q + self.attend(q, tokens, tokens, need_weights=False)[0])  # (B, 1 + Q, W)
        maps = self.lift(out[:, 1:].transpose(1, 2).unflatten(2, self.query_hw))  # (B, T * C, Hs, Ws)
        return Scene(maps.unflatten(1, (self.steps, self.channels)), out[:, 0])

    def decode(self, scene: Scene, trajectories: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scene, (B, K, T, 3) candidates (x, y, yaw in the current ego frame) -> occupancy logits
        (B, K, T, 2, Ho, Wo) for `OCCUPANCY` in each future ego frame, light logits (B, K, T, 4) for `LIGHTS`."""
        B, _, T, _ = trajectories.shape
        poses = trajectories.transpose(1, 2).flatten(0, 1)  # (B * T, K, 3)
        feats = warp(scene.maps.flatten(0, 1), self.scene, poses, self.occ)  # (B * T, K, C, Ho, Wo)
        feats = feats.unflatten(0, (B, T)).transpose(1, 2)  # (B, K, T, C, Ho, Wo)
        x, y, yaw = trajectories.unbind(-1)  # (B, K, T) each
        pose = torch.stack([x / POSE_SCALE, y / POSE_SCALE, yaw.sin(), yaw.cos()], -1)  # (B, K, T, 4)
        h = self.plan(pose.flatten(2))[:, :, None] + self.step + scene.summary[:, None, None]  # (B, K, T, W)
        scale, shift, lights = self.condition(h).split([self.channels, self.channels, len(LIGHTS)], -1)
        feats = F.gelu(feats * (1 + scale[..., None, None]) + shift[..., None, None])  # (B, K, T, C, Ho, Wo)
        occ = torch.einsum("bktchw,oc->bktohw", feats, self.occupancy.weight)
        return occ + self.occupancy.bias[:, None, None], lights


def iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Intersection over union of two boolean masks, pooled over all their elements; 1 when both are empty."""
    union = (pred | target).sum()
    return (pred & target).sum() / union if union > 0 else torch.ones(())


class WorldModel(nn.Module):
    """The enabled world-model heads and their losses. See the module docstring for what each head predicts.

    The `vq` head needs a trained `VQTokenizer`. It is kept outside this module's tree, so its weights are neither
    trained nor saved with the policy and `.train()` cannot reach it: save it with `tokenizer.save`.
    """

    def __init__(
        self,
        d_model: int,
        heads: tuple[str, ...],
        image_hw: tuple[int, int] = (128, 256),
        bev_hw: tuple[int, int] = (128, 128),
        tokenizer: VQTokenizer | None = None,
        width: int = 64,
        frame_hw: tuple[int, int] = (64, 128),
        occ_hw: tuple[int, int] = (32, 32),
        scene_channels: int = 8,
        weights: dict[str, float] | None = None,
        occ_pos_weight: float = PolicyConfig.occ_pos_weight,
    ) -> None:
        super().__init__()
        for head in heads:
            if head not in HEADS:
                raise ValueError(f"unknown world-model head {head!r}; choose from {HEADS}")
        for head in weights or {}:
            if head not in heads:
                raise ValueError(f"weight for {head!r}, which is not among the enabled heads {heads}")
        self.heads, self.occ_pos_weight = tuple(heads), occ_pos_weight
        self.weights = {head: 1.0 for head in heads} | (weights or {})
        self.image_hw, self.bev_hw, self.frame_hw = tuple(image_hw), tuple(bev_hw), tuple(frame_hw)
        self.vq_head = self.frame_head = self.bev_head = None
        if "vq" in heads:
            if tokenizer is None:
                raise ValueError("the vq head needs a trained VQTokenizer")
            if tokenizer.config.image_hw != self.image_hw:
                raise ValueError(f"tokenizer image_hw {tokenizer.config.image_hw} differs from image_hw {image_hw}")
            self.vq_head = VQHead(d_model, width, tokenizer.config.code_hw, tokenizer.config.codebook_size)
        self.__dict__["tokenizer"] = tokenizer.eval().requires_grad_(False) if tokenizer is not None else None
        if "frame" in heads:
            if any(n % f for n, f in zip(self.image_hw, self.frame_hw, strict=True)):
                raise ValueError(f"frame_hw {frame_hw} must divide image_hw {image_hw}")
            self.frame_head = FrameHead(d_model, width, FRAME_STEPS, self.frame_hw)
        if "bev" in heads:
            if bev_hw[0] % occ_hw[0] or bev_hw[0] * occ_hw[1] != bev_hw[1] * occ_hw[0]:
                raise ValueError(f"occ_hw {occ_hw} must divide bev_hw {bev_hw} by one factor in both directions")
            bev = BevConfig(height=bev_hw[0], width=bev_hw[1])
            self.bev_head = BevHead(d_model, width, Raster.of_bev(bev, tuple(occ_hw)), scene_channels)

    def predict_codes(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, h, w, D) -> the most likely codes of the frame at +0.5 s, (B, h', w') long."""
        return self.vq_head(grid).argmax(1)

    def predict_frames(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, h, w, D) -> frames at +0.5 ... +2 s, (B, 4, 3, Hf, Wf) in [0, 1]."""
        return self.frame_head(grid)

    def encode_scene(self, grid: torch.Tensor) -> Scene:
        """(B, h, w, D) -> the scene that `decode` reads; run once per frame."""
        return self.bev_head.encode_scene(grid)

    def decode(self, scene: Scene, trajectories: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scene, (B, K, 8, 3) candidate trajectories -> occupancy logits (B, K, 8, 2, Ho, Wo), light logits
        (B, K, 8, 4). See `BevHead.decode`."""
        return self.bev_head.decode(scene, trajectories)

    def predict_bev(self, grid: torch.Tensor, trajectories: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Occupancy and light probabilities for candidate trajectories, as `decode` shapes them."""
        occ, lights = self.decode(self.encode_scene(grid), trajectories)
        return occ.sigmoid(), lights.softmax(-1)

    # The targets each head is trained on, shared by the losses and the open-loop evaluation so both score the same.

    def vq_targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The tokenizer's codes of the frame at +0.5 s, (B, h', w') long."""
        return self.tokenizer.encode(batch["future_camera"][:, VQ_STEP])

    def frame_targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Frames at +0.5 ... +2 s averaged down to frame_hw, (B, 4, 3, Hf, Wf) in [0, 1]."""
        frames = batch["future_camera"][:, :FRAME_STEPS].flatten(0, 1).float() / 255  # (B * T, 3, H, W)
        return F.adaptive_avg_pool2d(frames, self.frame_hw).unflatten(0, (-1, FRAME_STEPS))

    def occupancy_targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Future vehicle / pedestrian occupancy at +0.5 ... +4 s in the true future ego frames, (B, 8, 2, Ho, Wo)
        0 / 1 floats: a cell is occupied if any of its BEV pixels is."""
        future = batch["future_bev"][:, :, OCCUPANCY_CHANNELS].float()  # (B, T, 2, Hb, Wb)
        pooled = F.adaptive_max_pool2d(future.flatten(0, 1), self.bev_head.occ.hw)  # (B * T, 2, Ho, Wo)
        return pooled.unflatten(0, future.shape[:2])

    def light_targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The ego's next light at +0.5 ... +4 s as `LIGHTS` classes (the dataset's -1 ... 2 plus 1), (B, 8)."""
        return batch["lights"][:, 1:] + 1

    def loss(self, grid: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted sum of the enabled heads' losses, and every term and metric as a float."""
        total, logs = grid.new_zeros(()), {}
        for head, fn in (("vq", self._vq_loss), ("frame", self._frame_loss), ("bev", self._bev_loss)):
            if head in self.heads:
                loss, head_logs = fn(grid, batch)
                total = total + self.weights[head] * loss
                logs |= head_logs
        logs["wm_loss"] = total.item()
        return total, logs

    def _vq_loss(self, grid: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        target = self.vq_targets(batch)  # (B, h', w')
        logits = self.vq_head(grid)  # (B, V, h', w')
        loss = F.cross_entropy(logits, target)
        acc = (logits.argmax(1) == target).float().mean()
        return loss, {"vq_ce": loss.item(), "vq_acc": acc.item()}

    def _frame_loss(self, grid: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        target = self.frame_targets(batch)  # (B, T, 3, Hf, Wf)
        pred = self.frame_head(grid)  # (B, T, 3, Hf, Wf)
        loss = F.l1_loss(pred, target)
        with torch.no_grad():
            logs = {"frame_l1": loss.item(), "frame_psnr": psnr(pred, target).mean().item()}
            logs["frame_ssim"] = ssim(pred, target).mean().item()
        return loss, logs

    def _bev_loss(self, grid: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        occ, lights = self.decode(self.encode_scene(grid), batch["trajectory"][:, None])  # the expert as candidate
        occ, lights = occ[:, 0], lights[:, 0]  # (B, T, 2, Ho, Wo), (B, T, 4)
        target = self.occupancy_targets(batch)  # (B, T, 2, Ho, Wo)
        light_target = self.light_targets(batch)  # (B, T)
        occ_loss = F.binary_cross_entropy_with_logits(occ, target, pos_weight=occ.new_tensor(self.occ_pos_weight))
        light_loss = F.cross_entropy(lights.flatten(0, 1), light_target.flatten())
        logs = {"bev_occ_bce": occ_loss.item(), "bev_light_ce": light_loss.item()}
        with torch.no_grad():
            for name, t in REPORT_STEPS.items():
                logs[f"bev_iou_{name}"] = iou(occ[:, t] > 0, target[:, t] > 0.5).item()
                logs[f"bev_light_acc_{name}"] = (lights[:, t].argmax(-1) == light_target[:, t]).float().mean().item()
        return occ_loss + light_loss, logs
