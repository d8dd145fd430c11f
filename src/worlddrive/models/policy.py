"""`WorldDrivePolicy`: vision, text, backbone, language head, action expert and (optionally) world-model heads joined
into one network, with the LeRobot-style policy API and checkpoint layout.

Training: `forward(batch) -> (loss, logs)` on a batch from `collate`, L = L_action (+ L_lateral + L_light) + lambda_wm
L_wm + lambda_lang L_lang. Driving: `reset()` at an episode start, then `select_action(obs)` once per env step (10 Hz):
the policy keeps the frames and poses it needs for the past, as the dataset's samples hold them. Checkpoints are a
folder of config.json, model.safetensors, tokenizer.json and stats.json (and backbone_config.json, the Hugging Face
config of an hf backbone, so that the checkpoint does not depend on where that config was), written atomically and
never pickled.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import deque
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from worlddrive.data.record import AGENT_FIELDS, COMMANDS, FUTURE, KEY_EVERY, MAX_AGENTS, PAST, assumed_past_pose
from worlddrive.fileio import replace_folder
from worlddrive.models.action import make_action_expert
from worlddrive.models.backbone import Layout, make_backbone
from worlddrive.models.config import PolicyConfig
from worlddrive.models.lateral import LateralHead, along_path, arc_loss, arc_path, arc_stations
from worlddrive.models.light import LIGHTS, LightHead
from worlddrive.models.sentence import MINILM_DIM, minilm
from worlddrive.models.text import TOKENIZER_FILE, TextTokenizer, corpus, train_tokenizer
from worlddrive.models.vision import VisionEncoder
from worlddrive.sim.camera import BEV_CHANNELS, BevConfig, CameraConfig
from worlddrive.sim.state import (
    CONTROL_NAMES,
    EGO_ACCEL,
    EGO_SPEED,
    EGO_STEER,
    EGO_YAW,
    EGO_YAW_RATE,
    STOP_HORIZON,
    to_ego_frame,
    wrap_angle,
)
from worlddrive.sim.vehicle import WAYPOINT_TIMES

if TYPE_CHECKING:
    from worlddrive.data.dataset import WorldDriveDataset
    from worlddrive.models.world_model import BevHead, Scene

CONFIG_FILE, MODEL_FILE, STATS_FILE = "config.json", "model.safetensors", "stats.json"
VQ_DIR = "vq"  # a policy with a `vq` head carries its frozen VQ tokenizer here
BACKBONE_FILE = "backbone_config.json"  # hf backbones only
CHECKPOINT_FILES = (CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE, STATS_FILE)
HISTORY_FEATURES = 2 + 3 * PAST  # steering, yaw rate; past poses (x, y, yaw), when config.ego_history
STD_FLOOR = 1e-2  # metres / radians: a coordinate that never varies in the data is not blown up by its ~0 std
# heads that read the camera frame themselves, not the shared tokens: each can train alone over a frozen policy, fast
HEADS_OF_THEIR_OWN = ("lateral", "light")
STOP_NEAR = 15.0  # m: the stop line distance feature exp(-d / STOP_NEAR) changes most over the last braking metres


def collate(items: list[dict[str, Any]], tokenizer: TextTokenizer, config: PolicyConfig) -> dict[str, Any]:
    """`WorldDriveDataset` items (or the policy's own observations) -> a batch.

    Tensors are stacked (B, ...); strings become lists; the camera keeps the last past_frames + 1 frames. Adds
    instruction_ids / instruction_mask (B, Ni) and, when the items have reasoning, reasoning_ids / reasoning_mask
    (B, Nr) laid out as <sep> text <eos> <pad>..., truncated to the config's token limits.
    """
    batch = {
        key: torch.stack([it[key] for it in items]) if torch.is_tensor(items[0][key]) else [it[key] for it in items]
        for key in items[0]
    }
    batch["camera"] = batch["camera"][:, -(config.past_frames + 1) :]
    ids = [tokenizer.encode(text) for text in batch["instruction"]]
    batch["instruction_ids"], batch["instruction_mask"] = tokenizer.pad(ids, config.max_instruction_tokens)
    if "reasoning" in batch:
        ids = [[tokenizer.sep_id, *tokenizer.encode(text), tokenizer.eos_id] for text in batch["reasoning"]]
        batch["reasoning_ids"], batch["reasoning_mask"] = tokenizer.pad(ids, config.max_reasoning_tokens)
    return batch


@dataclass
class Seen:
    """One env observation in a driving policy's history, with its camera frame's `VisionEncoder.embed` features
    once a decision has needed them: a frame serves as the current one and then as a past one, embedded once."""

    camera: torch.Tensor  # (3, H, W) uint8
    ego: np.ndarray  # (7,)
    command: int
    instruction: str
    map: dict[str, float]  # the map inputs this policy reads (PolicyConfig.map_inputs), by observation key
    embedded: torch.Tensor | None = None  # (D, h, w)


def check_finite(batch: dict[str, Any]) -> None:
    """Raise ValueError naming the first float field with NaN or inf (the training loop skips such batches). Not
    while exporting a graph (onnx_runtime.py), which cannot hold this data-dependent check: its caller checks."""
    if torch.compiler.is_exporting():
        return
    for name, value in batch.items():
        if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"batch field {name!r} has non-finite values (NaN or inf)")


class WorldDrivePolicy(nn.Module):
    def __init__(
        self,
        config: PolicyConfig,
        tokenizer: TextTokenizer,
        stats: dict[str, Any],
        world_model: nn.Module | None = None,
        backbone_config: str | Path | None = None,
    ):
        """`world_model`: the heads of config.wm_heads, built by the caller when they need more than the config
        (the `vq` head needs a trained VQ tokenizer); by default `WorldModel(d_model, wm_heads)`.
        `backbone_config`: for an hf backbone, a config.json to use instead of the one config.backbone names."""
        super().__init__()
        if tokenizer.vocab_size > config.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} symbols, more than vocab_size={config.vocab_size}")
        if world_model is not None and not config.wm_heads:
            raise ValueError("a world model was given but PolicyConfig.wm_heads is empty")
        self.config, self.tokenizer, self.stats = config, tokenizer, stats
        d = config.d_model
        self.vision = VisionEncoder(config)
        self.state = nn.Linear(config.motion_features + HISTORY_FEATURES * config.ego_history, d)  # (+ history)
        self.command = nn.Embedding(len(COMMANDS), d)
        self.token_embedding = nn.Embedding(config.vocab_size, d)
        # minilm: the frozen MiniLM's token states projected to d; the encoder is a plain attribute, not a submodule
        self.sentence_encoder = minilm() if config.instruction_encoder == "minilm" else None
        if self.sentence_encoder is None:
            self.instruction_pos = nn.Parameter(0.02 * torch.randn(config.max_instruction_tokens, d))
        else:
            self.instruction_proj = nn.Linear(MINILM_DIM, d)
        self.reasoning_pos = nn.Parameter(0.02 * torch.randn(config.max_reasoning_tokens, d))
        self.action_queries = nn.Parameter(0.02 * torch.randn(config.waypoints, d))
        self.backbone = make_backbone(config, backbone_config)
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        self.action_expert = make_action_expert(config)
        self.lateral = LateralHead(config) if config.lateral_head else None
        self.light = LightHead() if config.light_head else None
        self.light_state = nn.Linear(len(LIGHTS), d) if config.light_input else None
        self.apply(_init_weights)
        if self.light_state is not None:  # a grown checkpoint starts out deciding as it did
            nn.init.zeros_(self.light_state.weight)
            nn.init.zeros_(self.light_state.bias)
        planned = "trajectory_residual" if config.plan_residual else "trajectory"
        if config.plan_residual and not stats.get(planned):
            raise ValueError(
                f"PolicyConfig.plan_residual needs the dataset's {planned} stats (stats.json), which `worlddrive "
                "generate` writes since session 16: generate the first --data folder again (same seeds, same samples)"
            )
        times = torch.tensor(WAYPOINT_TIMES[: config.waypoints], dtype=torch.float32)  # (W,)
        self.register_buffer("waypoint_times", times, persistent=False)
        for name, key, rows in (("trajectory", planned, config.waypoints), ("past", "past_trajectory", PAST)):
            mean, std = _stat(stats, key, (rows, 3))
            self.register_buffer(f"{name}_mean", mean, persistent=False)
            self.register_buffer(f"{name}_std", std.clamp(min=STD_FLOOR), persistent=False)
        mean, std = _stat(stats, "ego_speed", ())
        self.speed_mean, self.speed_std = float(mean), max(float(std), STD_FLOOR)
        # The world-model heads, if any, read the current frame's hidden grid (`visual_grid`) and the batch. They are
        # a submodule, so their weights travel in the same state dict and checkpoint.
        self.world_model = world_model if world_model is not None else _world_model(config)
        self._history: deque[Seen] = deque(maxlen=PAST * KEY_EVERY + 1)

    @classmethod
    def from_dataset(cls, config: PolicyConfig, dataset: WorldDriveDataset) -> WorldDrivePolicy:
        """A fresh policy for a `WorldDriveDataset`: its stats, and a tokenizer fitted on the corpus and its texts."""
        return cls(config, train_tokenizer(corpus(dataset.root), config.vocab_size), dataset.stats)

    @property
    def device(self) -> torch.device:
        return self.action_queries.device

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate(items, self.tokenizer, self.config)

    def collate_fn(self) -> partial:
        """`collate` bound to this policy's tokenizer and config, cheap to send to DataLoader workers."""
        return partial(collate, tokenizer=self.tokenizer, config=self.config)

    # ---------------------------------------------------------------- the network

    def encode(self, batch: dict[str, Any], reasoning: bool) -> tuple[torch.Tensor, Layout]:
        """Run the backbone over [visual | state | instruction | (reasoning) | action]: hidden (B, L, D), layout.

        Without the reasoning slot the action queries get exactly the same hidden states (see backbone.py).
        """
        check_finite(batch)
        segments, valid = self._prefix(batch)
        if reasoning:
            segments["reasoning"] = self._text(batch["reasoning_ids"], self.reasoning_pos)
            valid["reasoning"] = batch["reasoning_mask"]
        # Each action query starts from the ego-state embedding, not only from attending to the state token: the
        # future path depends most on speed and command, and on real data this cut the ADE after 80 steps of `small`
        # from 6.5 m to 2.2 m (150 steps of `tiny`: 2.1 -> 1.0 m, two seeds).
        segments["action"] = self.action_queries + segments["state"]  # (B, W, D)
        return self.backbone(segments, valid)

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss on a collated batch; logs hold every term as a float.

        Raises ValueError naming the field if a float input is NaN/inf, FloatingPointError if the loss is.
        """
        batch = self._to_device(batch)
        cfg = self.config
        target = self.normalise(batch["trajectory"], batch["ego"][:, EGO_SPEED])  # (B, W, 3)
        alone = self._heads_training_alone()
        if alone:  # every other term is a constant: skip them
            check_finite(batch)
            heads = self._head_losses(batch, target, alone)
            loss = sum(heads.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite {sorted(heads)} loss from finite inputs: {_scalar(loss)}")
            return loss, {"loss": _scalar(loss), **{k: _scalar(v) for k, v in heads.items()}}
        hidden, layout = self.encode(batch, reasoning=cfg.lambda_lang > 0)  # (B, L, D)
        zero = hidden.new_zeros(())
        action_loss = self.action_expert.loss(hidden[:, layout["action"]], target)
        heads = self._head_losses(batch, target, [h for h in HEADS_OF_THEIR_OWN if getattr(self, h) is not None])
        lang_loss = self._language_loss(hidden[:, layout["reasoning"]], batch) if cfg.lambda_lang > 0 else zero
        wm_loss, wm_logs = zero, {}
        if self.world_model is not None:
            wm_loss, wm_logs = self.world_model.loss(self.visual_grid(hidden), batch)
        loss = action_loss + sum(heads.values(), zero) + cfg.lambda_wm * wm_loss + cfg.lambda_lang * lang_loss
        terms = {"loss": loss, "action_loss": action_loss, "wm_loss": wm_loss, "lang_loss": lang_loss, **heads}
        logs = {k: _scalar(v) for k, v in {**wm_logs, **terms}.items()}  # the heads' own terms and metrics too
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss from finite inputs: {logs}")
        return loss, logs

    def _heads_training_alone(self) -> list[str]:
        """The heads of their own (`HEADS_OF_THEIR_OWN`) that train while everything else is frozen (`worlddrive
        train --train-only lateral|light`); empty when anything else trains."""
        training = {name.split(".")[0] for name, p in self.named_parameters() if p.requires_grad}
        return sorted(training) if training and training <= set(HEADS_OF_THEIR_OWN) else []

    def _head_losses(self, batch: dict[str, Any], target: torch.Tensor, heads: list[str]) -> dict[str, torch.Tensor]:
        """`{head}_loss` of each named head of its own: the lateral head's path against the normalised target
        trajectory (B, W, 3) (or the trajectory at the arc head's stations), the light head's colour against the
        light ahead now."""
        losses = {}
        if "lateral" in heads and self.config.lateral_target == "arc":
            stations = arc_stations(batch["ego"][:, EGO_SPEED], self.waypoint_times)  # (B, W)
            losses["lateral_loss"] = arc_loss(self._lateral(batch), batch["trajectory"].float(), stations)
        elif "lateral" in heads:
            losses["lateral_loss"] = self.lateral.loss(self._lateral(batch), target)
        if "light" in heads:
            losses["light_loss"] = self.light.loss(self.light(batch["camera"][:, -1]), batch["lights"])
        return losses

    def visual_grid(self, hidden: torch.Tensor) -> torch.Tensor:
        """The backbone's hidden states of the current frame's patch tokens (B, h, w, D), for the world-model heads."""
        h, w = self.config.grid
        end = self.config.visual_tokens  # the visual segment comes first, the current frame last within it
        return hidden[:, end - h * w : end].unflatten(1, (h, w))

    def normalise(self, trajectory: torch.Tensor, speed: torch.Tensor) -> torch.Tensor:
        """(B, ..., W, 3) metres / radians, ego frame, at speeds (B,) -> per-waypoint standard units (of the residual
        with config.plan_residual)."""
        return (trajectory - self._driving_on(speed, trajectory.dim()) - self.trajectory_mean) / self.trajectory_std

    def denormalise(self, trajectory: torch.Tensor, speed: torch.Tensor) -> torch.Tensor:
        return trajectory * self.trajectory_std + self.trajectory_mean + self._driving_on(speed, trajectory.dim())

    def _driving_on(self, speed: torch.Tensor, dims: int) -> torch.Tensor:
        """Driving straight on at `speed` (B,) as waypoints broadcastable to (B, ..., W, 3); zero without
        config.plan_residual."""
        if not self.config.plan_residual:
            return torch.zeros((), device=speed.device)
        x = speed.reshape(-1, *[1] * (dims - 2)).float() * self.waypoint_times  # (B, ..., W)
        return torch.stack([x, torch.zeros_like(x), torch.zeros_like(x)], dim=-1)

    def _motion(self, batch: dict[str, Any]) -> torch.Tensor:
        """Normalised speed and acceleration with speed_input, the speed limit with speed_limit_input and the next
        stop line with stop_line_input (B, motion_features). The limit is normalised like the speed, acceleration is
        O(1) in m/s² already; the stop line's distance comes linear and as exp(-d / STOP_NEAR), which resolves the
        last metres."""
        ego = batch["ego"]
        features = [ego.new_zeros(len(ego), 0)]  # (B, 0): a policy may read none of these
        if self.config.speed_input:
            features += [(ego[:, EGO_SPEED : EGO_SPEED + 1] - self.speed_mean) / self.speed_std]
            features += [ego[:, EGO_ACCEL : EGO_ACCEL + 1]]
        if self.config.speed_limit_input:
            features.append((batch["speed_limit"][:, None].float() - self.speed_mean) / self.speed_std)
        if self.config.stop_line_input:
            distance = batch["stop_distance"][:, None].float()  # (B, 1) metres, STOP_HORIZON when none
            control = F.one_hot(batch["stop_control"].long(), len(CONTROL_NAMES))[:, 1:]  # (B, 3), none: zeros
            features += [distance / STOP_HORIZON, torch.exp(-distance.clamp(min=0) / STOP_NEAR), control.float()]
        return torch.cat(features, dim=1)

    def _lateral(self, batch: dict[str, Any]) -> torch.Tensor:
        """The lateral head's output (B, W, 3 or 4), from the current frame: the normalised path, or with
        lateral_target "arc" offsets from its stations (`lateral.arc_path`)."""
        return self.lateral(batch["camera"][:, -1], self._motion(batch), batch["command"])

    def lateral_path(self, batch: dict[str, Any]) -> torch.Tensor:
        """The lateral head's path (B, W, 3) in metres / radians, ego frame; an arc head's has its pace as a fourth
        column (`lateral.arc_path`)."""
        speed = batch["ego"][:, EGO_SPEED]  # (B,)
        if self.config.lateral_target == "arc":
            return arc_path(self._lateral(batch), arc_stations(speed, self.waypoint_times))
        return self.denormalise(self._lateral(batch), speed)

    def _prefix(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Embedded visual, state and instruction segments, and the instruction's padding mask."""
        ego = batch["ego"]
        features = [self._motion(batch)]
        if self.config.ego_history:  # steering and yaw rate are O(1) in SI units already
            past = ((batch["past_trajectory"] - self.past_mean) / self.past_std).flatten(1)
            history = torch.cat([ego[:, EGO_STEER : EGO_YAW_RATE + 1], past], dim=1)  # (B, HISTORY_FEATURES)
            if self.training and self.config.history_dropout:
                keep = torch.rand(len(history), 1, device=history.device) >= self.config.history_dropout  # (B, 1)
                history = history * keep
            features.append(history)
        features = torch.cat(features, dim=1)  # (B, motion_features [+ HISTORY_FEATURES])
        state = self.state(features) + self.command(batch["command"])  # (B, D)
        if self.light_state is not None:  # no gradient into the light head: it stays a light classifier
            state = state + self.light_state(self.light_probs(batch))
        instruction, instruction_valid = self._instruction(batch)
        segments = {
            "visual": self.vision(batch["camera"], batch.get("camera_embedded")),  # (B, Nv, D)
            "state": state[:, None],  # (B, 1, D)
            "instruction": instruction,  # (B, Ni, D)
        }
        return segments, {"instruction": instruction_valid}

    def _instruction(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The instruction segment (B, Ni, D) and its padding mask (B, Ni): BPE tokens, or MiniLM token states."""
        if self.sentence_encoder is None:
            return self._text(batch["instruction_ids"], self.instruction_pos), batch["instruction_mask"]
        states, mask = self.sentence_encoder(batch["instruction"])  # (B, T, 384), (B, T)
        return self.instruction_proj(states.to(self.device)), mask.to(self.device)

    def _text(self, ids: torch.Tensor, pos: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Token ids (B, T) at slot positions start ... start + T - 1 -> embeddings (B, T, D)."""
        return self.token_embedding(ids) + pos[start : start + ids.shape[1]]

    def _language_loss(self, hidden: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """Next-token cross-entropy over the reasoning slot (B, Nr, D); <sep> is never a target, <eos> is."""
        targets = batch["reasoning_ids"][:, 1:].masked_fill(~batch["reasoning_mask"][:, 1:], -100)
        return F.cross_entropy(self.lm_head(hidden[:, :-1]).flatten(0, 1), targets.flatten(), ignore_index=-100)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    # ---------------------------------------------------------------- inference on batches

    @torch.no_grad()
    def predict_trajectory(
        self, batch: dict[str, Any], num_samples: int = 1, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """K trajectories per sample (B, K, W, 3) in metres / radians, ego frame. Runs no reasoning. With the
        lateral head, every sample goes along the head's path, as far as config.pace says."""
        return self.paced(*self.plan_and_path(self._to_device(batch), num_samples, generator))

    @torch.no_grad()
    def plan_and_scene(self, batch: dict[str, Any]) -> tuple[torch.Tensor, Scene]:
        """The plan (B, W, 3) `predict_trajectory` gives and the bev head's encoding of the current frame, from one
        pass of the network: what imagination planning (plan/imagine.py) scores candidate plans against."""
        bev_head = self.bev_head()
        batch = self._to_device(batch)
        hidden, layout = self.encode(batch, reasoning=False)
        plan = self.paced(*self._plan_and_path(hidden, layout, batch, 1, None))[:, 0]
        return plan, bev_head.encode_scene(self.visual_grid(hidden))

    @torch.no_grad()
    def light_probs(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """The light head's probabilities (B, 4) over `light.LIGHTS` for the light ahead now; None without it."""
        if self.light is None:
            return None
        return self.light(self._to_device(batch)["camera"][:, -1]).float().softmax(-1)

    def bev_head(self) -> BevHead:
        """The world model's bev head, which imagination needs; a ValueError naming the heads this policy has."""
        if self.world_model is None or self.world_model.bev_head is None:
            raise ValueError(f"imagination needs the bev world-model head; this policy has {self.config.wm_heads}")
        return self.world_model.bev_head

    def paced(self, plan: torch.Tensor, path: torch.Tensor | None) -> torch.Tensor:
        """Plans (B, K, W, 3) put on the lateral head's path (B, W, 3) as far as config.pace says (as they are
        without the head)."""
        return plan if path is None else along_path(plan, path, self.config.pace)

    def plan_and_path(
        self, batch: dict[str, Any], num_samples: int = 1, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A decision's network before the pace puts the plans on the path: the action expert's K plans (B, K, W, 3)
        and the lateral head's path (B, W, 3), None without the head; metres / radians, ego frame. Also the graph
        `worlddrive export` traces (onnx_runtime.py)."""
        hidden, layout = self.encode(batch, reasoning=False)
        return self._plan_and_path(hidden, layout, batch, num_samples, generator)

    def _plan_and_path(
        self,
        hidden: torch.Tensor,
        layout: Layout,
        batch: dict[str, Any],
        num_samples: int,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        speed = batch["ego"][:, EGO_SPEED]  # (B,)
        plan = self.denormalise(self.action_expert.predict(hidden[:, layout["action"]], num_samples, generator), speed)
        return plan, None if self.lateral is None else self.lateral_path(batch)

    @torch.no_grad()
    def generate_tokens(
        self, batch: dict[str, Any], max_tokens: int | None = None, use_cache: bool = True
    ) -> torch.Tensor:
        """Greedy reasoning token ids (B, T), <pad> after a sample's <eos>; T <= max_tokens <= Nr - 1.

        With the KV cache the prefix runs once and each step feeds one token; without it every step reruns the
        whole sequence (the reference the cache is tested against).
        """
        batch = self._to_device(batch)
        max_tokens = min(max_tokens or self.config.max_reasoning_tokens, self.config.max_reasoning_tokens - 1)
        tok = self.tokenizer
        segments, valid = self._prefix(batch)
        B = len(batch["command"])
        ids = torch.full((B, 1), tok.sep_id, dtype=torch.long, device=self.device)
        cache = self.backbone.new_cache() if use_cache else None
        hidden, _ = self.backbone({**segments, "reasoning": self._text(ids, self.reasoning_pos)}, valid, cache)
        prefix_valid = F.pad(valid["instruction"], (segments["visual"].shape[1] + 1, 0), value=True)
        out, done = [], torch.zeros(B, dtype=torch.bool, device=self.device)
        for _ in range(max_tokens):
            next_id = self.lm_head(hidden[:, -1]).argmax(-1).masked_fill(done, tok.pad_id)  # (B,)
            out.append(next_id)
            done |= next_id == tok.eos_id
            if done.all() or len(out) == max_tokens:
                break
            ids = torch.cat([ids, next_id[:, None]], dim=1)
            if cache is None:
                hidden, _ = self.backbone({**segments, "reasoning": self._text(ids, self.reasoning_pos)}, valid)
            else:
                key_valid = F.pad(prefix_valid, (0, ids.shape[1]), value=True)
                hidden = self.backbone.step(
                    self._text(ids[:, -1:], self.reasoning_pos, start=ids.shape[1] - 1), key_valid, cache
                )
        return torch.stack(out, dim=1)

    def generate_reasoning(self, batch: dict[str, Any], max_tokens: int | None = None) -> list[str]:
        """Greedy reasoning text per sample, decoded up to <eos>."""
        eos = self.tokenizer.eos_id
        texts = []
        for row in self.generate_tokens(batch, max_tokens).tolist():
            texts.append(self.tokenizer.decode(row[: row.index(eos)] if eos in row else row))
        return texts

    # ---------------------------------------------------------------- driving (env observations)

    def reset(self) -> None:
        """Forget the frame history (and its embedded frames): call at the start of every episode and after the
        weights change."""
        self._history.clear()

    def select_action(self, obs: dict[str, Any]) -> np.ndarray:
        """The trajectory (W, 3) float32 to drive for an env observation; call once per env step, in eval mode
        (`from_pretrained` returns the policy in eval mode)."""
        return self.predict(obs)["trajectory"]

    def predict(self, obs: dict[str, Any], num_samples: int = 1, reason: bool = False, seed: int = 0) -> dict:
        """trajectory (W, 3) (the first sample), samples (K, W, 3), reasoning text (None unless `reason`).

        The observation joins the history, so call it once per env step. Sampling experts draw from a generator
        seeded with `seed`: the same observation gives the same samples.
        """
        self.observe(obs)
        batch = self.history_batch()
        generator = torch.Generator(self.device).manual_seed(seed)
        samples = self.predict_trajectory(batch, num_samples, generator)[0].float().cpu().numpy()  # (K, W, 3)
        return {
            "trajectory": samples[0],
            "samples": samples,
            "reasoning": self.generate_reasoning(batch)[0] if reason else None,
        }

    def observe(self, obs: dict[str, Any]) -> None:
        """Add an env observation to the history without predicting (`predict` does this itself): a driver that
        replans less often than every env step still shows the policy every step's frame."""
        camera = torch.from_numpy(np.ascontiguousarray(obs["camera"])).permute(2, 0, 1)  # (3, H, W)
        missing = [name for name in self.config.map_inputs if name not in obs]
        if missing:
            raise ValueError(
                f"this policy reads the map's {missing} (PolicyConfig speed_limit_input / stop_line_input): the "
                f"observation lacks them, it has {sorted(obs)}"
            )
        map_inputs = {name: float(obs[name]) for name in self.config.map_inputs}
        ego = np.asarray(obs["ego"], np.float32)  # (7,)
        self._history.append(Seen(camera, ego, int(obs["command"]), obs["instruction"], map_inputs))

    @torch.no_grad()
    def history_batch(self) -> dict[str, Any]:
        """The latest observation and its past as a batch of one in the dataset's layout, with the frames' features
        (`camera_embedded`, each frame embedded on its first use only).

        The dataset's past frames are 0.5 s (KEY_EVERY env steps) apart. Early in an episode, missing past frames
        repeat the oldest one seen and missing past poses assume the ego drove straight at its current speed, as
        the dataset's first samples of an episode do.
        """
        now = self._history[-1]
        seen, poses = [], []
        for age in range(PAST, -1, -1):  # oldest first
            i = len(self._history) - 1 - age * KEY_EVERY
            seen.append(self._history[max(i, 0)])
            if age:
                if i >= 0:
                    past = self._history[i].ego
                    poses.append([*to_ego_frame(past[:2], now.ego), wrap_angle(past[EGO_YAW] - now.ego[EGO_YAW])])
                else:
                    poses.append(assumed_past_pose(now.ego, age))
        item = {
            "camera": torch.stack([s.camera for s in seen]),  # (PAST + 1, 3, H, W)
            "ego": torch.from_numpy(now.ego),
            "past_trajectory": torch.tensor(poses[::-1], dtype=torch.float32),  # 0.5 s ago first, like the dataset
            "command": torch.tensor(now.command),
            "instruction": str(now.instruction),
        }
        item.update({name: torch.tensor(value, dtype=torch.float32) for name, value in now.map.items()})
        batch = self.collate([item])
        used = seen[-(self.config.past_frames + 1) :]  # the frames collate keeps
        new = list({id(s): s for s in used if s.embedded is None}.values())  # the first frame may repeat
        if new:
            for s, e in zip(new, self.vision.embed(torch.stack([s.camera for s in new]).to(self.device)), strict=True):
                s.embedded = e
        batch["camera_embedded"] = torch.stack([s.embedded for s in used])[None]  # (1, T, D, h, w)
        return batch

    # ---------------------------------------------------------------- checkpoints

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json, model.safetensors, tokenizer.json and stats.json into a temporary sibling folder, then
        rename it to `directory` (replacing an older checkpoint there), so a reader never sees half a checkpoint."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, tmp / MODEL_FILE, metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        (tmp / STATS_FILE).write_text(json.dumps(self.stats, indent=2) + "\n")
        if self.config.hf_source is not None:
            self.backbone.hf_config.to_json_file(tmp / BACKBONE_FILE)
        self.tokenizer.save(tmp)
        vq = getattr(self.world_model, "tokenizer", None)
        if vq is not None:  # the frozen VQ tokenizer the `vq` head reads: a checkpoint must load on its own
            vq.save(tmp / VQ_DIR)
        replace_folder(tmp, directory)
        return directory

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        world_model: nn.Module | None = None,
        pace: str | None = None,
        planner: str | None = None,
    ) -> WorldDrivePolicy:
        """A saved policy, in eval mode on its config's device. Errors name the missing file, the config keys or the
        tensors that do not match. `world_model` as in `__init__` (its weights are loaded from the checkpoint);
        `pace` and `planner` replace the config's (PolicyConfig.pace, .planner: they shape no weights)."""
        directory = Path(directory)
        for name in CHECKPOINT_FILES:
            if not (directory / name).is_file():
                raise FileNotFoundError(f"checkpoint {directory} has no {name}")
        asked = {k: v for k, v in (("pace", pace), ("planner", planner)) if v is not None}
        try:
            config = PolicyConfig.from_dict({**_read_json(directory / CONFIG_FILE), **asked})
        except (TypeError, ValueError) as e:
            driven = "".join(f" driven with {k} {v!r}" for k, v in asked.items())
            raise ValueError(f"{directory / CONFIG_FILE}{driven}: {e}") from e
        backbone_config = None
        if config.hf_source is not None:
            backbone_config = directory / BACKBONE_FILE
            if not backbone_config.is_file():
                raise FileNotFoundError(f"checkpoint {directory} has an hf backbone but no {BACKBONE_FILE}")
        tokenizer, stats = TextTokenizer.load(directory), _read_json(directory / STATS_FILE)
        if world_model is None and "vq" in config.wm_heads:
            if not (directory / VQ_DIR).is_dir():
                raise FileNotFoundError(f"checkpoint {directory} has a vq head but no {VQ_DIR}/ (its VQ tokenizer)")
            from worlddrive.models.vq import VQTokenizer
            from worlddrive.models.world_model import WorldModel

            world_model = WorldModel(
                config.d_model,
                config.wm_heads,
                tokenizer=VQTokenizer.load(directory / VQ_DIR),
                occ_pos_weight=config.occ_pos_weight,
            )
        model = cls(config, tokenizer, stats, world_model, backbone_config)
        tensors = load_file(directory / MODEL_FILE)
        expected = model.state_dict()
        missing, unexpected = sorted(expected.keys() - tensors.keys()), sorted(tensors.keys() - expected.keys())
        shapes = [
            f"{k} {tuple(tensors[k].shape)} != {tuple(v.shape)}"
            for k, v in expected.items()
            if k in tensors and tensors[k].shape != v.shape
        ]
        if missing or unexpected or shapes:
            raise ValueError(
                f"{directory / MODEL_FILE} does not fit the model of its {CONFIG_FILE}: missing tensors {missing}, "
                f"unexpected tensors {unexpected}, shape mismatches (checkpoint != model) {shapes}"
            )
        model.load_state_dict(tensors)
        return model.to(config.torch_device).eval()

    # ---------------------------------------------------------------- training helpers

    def configure_optimizers(self, weight_decay: float, lr: float, betas: tuple[float, float] = (0.9, 0.95)):
        """AdamW; weight decay only on the weights of linear and conv layers (not norms, biases, embeddings)."""
        decay, no_decay = [], []
        for module in self.modules():
            for name, p in module.named_parameters(recurse=False):
                if p.requires_grad:
                    is_matrix = isinstance(module, nn.Linear | nn.Conv2d) and name == "weight"
                    (decay if is_matrix else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=betas)

    def example_batch(self, batch_size: int = 1) -> dict[str, Any]:
        """A batch of zeros shaped like the default dataset's, texts at their full token length (the worst case)."""
        cfg, cam, bev = self.config, CameraConfig(), BevConfig()
        bev_shape = (len(BEV_CHANNELS), bev.height, bev.width)
        item = {
            "camera": torch.zeros(PAST + 1, 3, cam.height, cam.width, dtype=torch.uint8),
            "future_camera": torch.zeros(FUTURE, 3, cam.height, cam.width, dtype=torch.uint8),
            "bev": torch.zeros(bev_shape, dtype=torch.uint8),
            "future_bev": torch.zeros(FUTURE, *bev_shape, dtype=torch.uint8),
            "trajectory": torch.zeros(FUTURE, 3),
            "past_trajectory": torch.zeros(PAST, 3),
            "ego": torch.zeros(7),
            "agents": torch.zeros(FUTURE + 1, MAX_AGENTS, len(AGENT_FIELDS)),
            "agent_mask": torch.zeros(FUTURE + 1, MAX_AGENTS, dtype=torch.bool),
            "lights": torch.full((FUTURE + 1,), -1),
            "command": torch.tensor(0),
            "speed_limit": torch.tensor(10.0),
            "stop_distance": torch.tensor(STOP_HORIZON),
            "stop_control": torch.tensor(0),
            "instruction": "",
            "reasoning": "",
            "facts": "{}",
        }
        batch = self.collate([item] * batch_size)
        for name, length in (("instruction", cfg.max_instruction_tokens), ("reasoning", cfg.max_reasoning_tokens)):
            batch[f"{name}_ids"] = torch.full((batch_size, length), self.tokenizer.eos_id + 1)  # any non-special id
            batch[f"{name}_mask"] = torch.ones(batch_size, length, dtype=torch.bool)
        return batch


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def _scalar(value: torch.Tensor | float) -> float:
    return float(value.detach()) if torch.is_tensor(value) else float(value)


def _stat(stats: dict[str, Any], key: str, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of a stats.json entry, checked for shape."""
    try:
        mean, std = (torch.tensor(stats[key][s], dtype=torch.float32) for s in ("mean", "std"))
    except (KeyError, TypeError) as e:
        raise ValueError(f"stats lack {key}.mean / {key}.std") from e
    if mean.shape != shape or std.shape != shape:
        raise ValueError(f"stats {key} mean/std have shapes {tuple(mean.shape)}/{tuple(std.shape)}, expected {shape}")
    return mean, std


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def _world_model(config: PolicyConfig) -> nn.Module | None:
    """`worlddrive.models.world_model.WorldModel` of config's d_model, wm_heads and occ_pos_weight when config.wm_heads
    asks for heads, else None.

    Its contract: `loss(grid (B, h, w, D), batch) -> (scalar tensor, logs dict)`. Imported lazily so that an
    action-only policy does not depend on the world-model code.
    """
    if not config.wm_heads:
        return None
    try:
        from worlddrive.models.world_model import WorldModel
    except ImportError as e:
        raise ImportError(
            f"PolicyConfig.wm_heads={config.wm_heads} needs worlddrive.models.world_model.WorldModel: {e}"
        ) from e
    return WorldModel(config.d_model, config.wm_heads, occ_pos_weight=config.occ_pos_weight)
