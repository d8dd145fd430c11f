"""Open-loop evaluation on logged samples (DESIGN.md "Metrics": open loop, world model, reasoning).

The policy never drives here: each sample's plan, imagined future and reasoning are compared with what the expert
did and what then happened. Samples are visited in a fixed order (evenly spread over the split when capped) and
sampling experts draw from a fixed seed, so the same checkpoint on the same data gives the same numbers.

Every metric is a flat float; a metric whose head or input is missing is absent, never NaN. Definitions:
- ade, ade_1s, ade_2s, ade_3s: mean Euclidean (x, y) distance in metres between predicted and expert waypoints, over
  the waypoints up to +4 s (all 8), +1, +2 and +3 s, then over samples; fde: the same at the +4 s waypoint alone.
  Sampling experts are scored on their first sample.
- plan_collision_rate: fraction of samples where the ego box (length x width of the sim's ego), placed at any
  waypoint with its yaw, overlaps a logged agent box (vehicles, parked cars, pedestrians) at the same instant.
  Agents are the true ones of the expert's future, not reacting to the plan. expert_plan_collision_rate: the same
  for the expert's own trajectory, the floor this test can reach (not exactly 0: it counts contacts the expert
  suffered, e.g. being rear-ended, and the agents kept are only the nearest `MAX_AGENTS`).
- red_overrun: over samples where the ego, moving faster than RED_MOVING_MS, has a red light whose stop line is at
  most RED_NEAR_M ahead and the expert stops before it (its +4 s waypoint, measured along the trajectory, within 1 m
  past the line), the fraction whose plan's +4 s waypoint goes more than 1 m past the line; red_samples: how many
  such samples (absent if none). The lamp is ~1 px at 30 m in small's 64 x 128 input: a policy that cannot see it
  shows it here.
- frame_psnr, frame_ssim (+ _1s, _2s): PSNR (dB) / SSIM of the `frame` head's frames against the future frames
  averaged down to its resolution, per frame, then averaged over the horizons +0.5 ... +2 s (or at one horizon).
- vq_code_acc: fraction of code cells of the +0.5 s frame where the `vq` head's most likely code is the tokenizer's;
  vq_psnr: PSNR of the tokenizer's decoding of the predicted codes against the real frame; vq_tokenizer_psnr: the
  same for the true codes, the ceiling set by the tokenizer.
- bev_iou_true_plan (+ _1s, _2s): vehicle + pedestrian occupancy IoU of the `bev` head conditioned on the expert's
  trajectory, intersection and union counted over all cells, channels and samples (and over the 8 horizons, or at
  one). bev_iou_own_plan: the head conditioned on the policy's plan instead, its prediction moved from the planned
  poses into the true ones (cells it did not cover count as empty), so both compare with the same rasters.
- light_acc_1s, light_acc_2s: accuracy of the `bev` head's state of the ego's next light (none, green, yellow, red)
  with the expert's trajectory; light_acc_lit_1s / _2s: the same over samples that have a light then (absent if none).
- fact_light_acc, fact_ped_acc, fact_meta_acc: agreement of the generated reasoning, as `parse_reasoning` reads it,
  with the true light state, nearest pedestrian's intent, and meta-action (speed and lateral action both right);
  a scene without a light or pedestrian counts as right when the text mentions none, so an empty text scores the
  share of such scenes: fact_light_acc_lit and fact_ped_acc_present count only the scenes that have one (absent if
  none do). fact_speed_acc and fact_lateral_acc split the meta-action; fact_acc is the mean of the three;
  fact_fields_acc the mean over all fields `fact_accuracy` scores. Only `reason_samples` samples (evenly spread)
  are generated: fact_samples.
- samples: number of samples evaluated.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from worlddrive.data.annotate import SceneFacts, fact_accuracy
from worlddrive.data.record import AGENT_FIELDS
from worlddrive.models.policy import WorldDrivePolicy
from worlddrive.models.vq import psnr, ssim
from worlddrive.models.world_model import REPORT_STEPS, WorldModel, reframe
from worlddrive.sim.geometry import boxes_overlap, distance_along
from worlddrive.sim.state import EGO_SPEED, LIGHT_CONTROL, LIGHT_NAMES
from worlddrive.sim.vehicle import BicycleLimits

EGO_SIZE = (BicycleLimits().length, BicycleLimits().width)  # the dataset does not store it; the sim's ego has it
ADE_STEPS = {"1s": 1, "2s": 3, "3s": 5}  # last waypoint index of the shorter ADEs (waypoints are 0.5 s apart)
RED_NEAR_M = 40.0  # red lights counted by red_overrun: stop line at most this far ahead ...
RED_MOVING_MS = 2.0  # ... and the ego faster than this (standing at the line is easy)
_RED = LIGHT_NAMES.index("red")
_X, _YAW, _LENGTH = (AGENT_FIELDS.index(name) for name in ("x", "yaw", "length"))  # y and width follow x and length
FACTS = {  # metric: field of `fact_accuracy`
    "fact_light_acc": "light",
    "fact_ped_acc": "pedestrian_intent",
    "fact_speed_acc": "speed_action",
    "fact_lateral_acc": "lateral_action",
    "fact_fields_acc": "mean",
}


def spread(n: int, k: int | None) -> np.ndarray:
    """min(n, k) distinct indices evenly spread over range(n), in order; all of them when k is None."""
    k = n if k is None else min(n, k)
    return np.arange(k) * n // max(k, 1)


def plan_collisions(
    plans: np.ndarray, agents: np.ndarray, mask: np.ndarray, ego_size: tuple[float, float] = EGO_SIZE
) -> np.ndarray:
    """Which plans put the ego box on a logged agent box at the same instant.

    plans (B, T, 3) waypoints x, y, yaw at +0.5 ... T / 2 s; agents (B, T + 1, A, 7) boxes at +0 ... T / 2 s and
    mask (B, T + 1, A), all in the current ego frame as the dataset stores them -> (B,) bool.
    """
    boxes, valid = agents[:, 1:], mask[:, 1:]  # (B, T, A, 7), (B, T, A): waypoint k's instant
    yaw = plans[:, :, None, 2]  # (B, T, 1)
    d = boxes[..., _X : _X + 2] - plans[:, :, None, :2]  # (B, T, A, 2)
    cos, sin = np.cos(yaw), np.sin(yaw)
    rel = np.stack([cos * d[..., 0] + sin * d[..., 1], cos * d[..., 1] - sin * d[..., 0]], -1)  # in the planned frame
    dyaw = boxes[..., _YAW] - yaw  # (B, T, A)
    half = boxes[..., _LENGTH : _LENGTH + 2] / 2  # (B, T, A, 2)
    hit = boxes_overlap(rel.reshape(-1, 2), dyaw.ravel(), np.asarray(ego_size) / 2, half.reshape(-1, 2))
    return (hit.reshape(valid.shape) & valid).any((1, 2))


def pooled_iou(intersection: torch.Tensor, union: torch.Tensor) -> float:
    """IoU of counts summed over everything they were counted on; 1 when both masks were empty everywhere."""
    return float(intersection.sum() / union.sum()) if union.sum() > 0 else 1.0


@torch.no_grad()
def open_loop_metrics(
    policy: WorldDrivePolicy,
    dataset: Dataset,
    max_samples: int | None = None,
    batch_size: int = 32,
    reason: bool = True,
    progress: Callable[[int, int], None] | None = None,
    reason_samples: int = 64,
) -> dict[str, float]:
    """The metrics of the module docstring on `dataset` (e.g. a val split), at most `max_samples` of it evenly spread.

    `progress(done, total)` is called after each batch, samples counted; reasoning runs only if `reason`. The policy
    is evaluated in eval mode and left in the mode it came in.
    """
    indices = spread(len(dataset), max_samples)
    if not len(indices):
        raise ValueError("open-loop evaluation needs at least one sample; the dataset is empty")
    was_training = policy.training
    policy.eval()
    try:
        metrics = _trajectory_and_world(policy, dataset, indices, batch_size, progress)
        if reason and reason_samples > 0:
            metrics |= _reasoning(policy, dataset, indices[spread(len(indices), reason_samples)], batch_size)
    finally:
        policy.train(was_training)
    return metrics


def _batches(
    policy: WorldDrivePolicy, dataset: Dataset, indices: np.ndarray, batch_size: int
) -> DataLoader[dict[str, Any]]:
    return DataLoader(Subset(dataset, indices.tolist()), batch_size, collate_fn=policy.collate_fn())


def _trajectory_and_world(
    policy: WorldDrivePolicy,
    dataset: Dataset,
    indices: np.ndarray,
    batch_size: int,
    progress: Callable[[int, int], None] | None,
) -> dict[str, float]:
    generator = torch.Generator(policy.device).manual_seed(0)
    wm = policy.world_model
    per_sample: dict[str, list[torch.Tensor]] = defaultdict(list)  # metric -> per-sample values of each batch
    counts: dict[str, list[torch.Tensor]] = defaultdict(list)  # IoU intersections and unions per horizon (T,)
    done = 0
    for batch in _batches(policy, dataset, indices, batch_size):
        plan = policy.predict_trajectory(batch, generator=generator)[:, 0].float().cpu()  # (B, T, 3)
        truth = batch["trajectory"]  # (B, T, 3)
        _score_plans(plan, batch, per_sample)
        if wm is not None:
            device_batch = {k: v.to(policy.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            grid = policy.visual_grid(policy.encode(device_batch, reasoning=False)[0])  # (B, h, w, D)
            if wm.frame_head is not None:
                _score_frames(wm.predict_frames(grid).float().cpu(), wm.frame_targets(batch), per_sample)
            if wm.vq_head is not None:
                _score_codes(wm, wm.predict_codes(grid).cpu(), batch, per_sample)
            if wm.bev_head is not None:
                _score_bev(wm, grid, truth, plan, batch, per_sample, counts)
        done += len(truth)
        if progress is not None:
            progress(done, len(indices))
    values = {name: torch.cat(v).float() for name, v in per_sample.items()}
    metrics = {name: v.mean().item() for name, v in values.items() if len(v)}  # no lit sample: no light_acc_lit
    if "red_overrun" in metrics:
        metrics["red_samples"] = float(len(values["red_overrun"]))
    for plan_name in ("true_plan", "own_plan") if counts else ():
        inter, union = (torch.stack(counts[f"{plan_name}_{kind}"]).sum(0) for kind in ("inter", "union"))  # (T,)
        metrics[f"bev_iou_{plan_name}"] = pooled_iou(inter, union)
        for name, t in REPORT_STEPS.items():
            metrics[f"bev_iou_{plan_name}_{name}"] = pooled_iou(inter[t], union[t])
    return {**metrics, "samples": float(len(indices))}


def _score_plans(plan: torch.Tensor, batch: dict[str, Any], out: dict[str, list[torch.Tensor]]) -> None:
    truth = batch["trajectory"]
    dist = (plan[..., :2] - truth[..., :2]).norm(dim=-1)  # (B, T)
    out["ade"].append(dist.mean(1))
    out["fde"].append(dist[:, -1])
    for name, last in ADE_STEPS.items():
        out[f"ade_{name}"].append(dist[:, : last + 1].mean(1))
    agents, mask = batch["agents"].numpy(), batch["agent_mask"].numpy()
    out["plan_collision_rate"].append(torch.from_numpy(plan_collisions(plan.numpy(), agents, mask)))
    out["expert_plan_collision_rate"].append(torch.from_numpy(plan_collisions(truth.numpy(), agents, mask)))
    line = batch["stop_distance"]  # (B,) metres along the route
    red = (batch["lights"][:, 0] == _RED) & (batch["stop_control"] == LIGHT_CONTROL) & (line <= RED_NEAR_M)
    red &= batch["ego"][:, EGO_SPEED] > RED_MOVING_MS
    planned, driven = (torch.from_numpy(distance_along(t.numpy())[:, -1]) for t in (plan, truth))  # (B,) at +4 s
    red &= driven <= line + 1.0  # the expert stops there
    out["red_overrun"].append((planned[red] > line[red] + 1.0).float())


def _score_frames(pred: torch.Tensor, target: torch.Tensor, out: dict[str, list[torch.Tensor]]) -> None:
    """(B, T, 3, Hf, Wf) predicted and true frames in [0, 1]."""
    for metric, fn in (("psnr", psnr), ("ssim", ssim)):
        score = fn(pred, target)  # (B, T)
        out[f"frame_{metric}"].append(score.mean(1))
        for name, t in REPORT_STEPS.items():
            out[f"frame_{metric}_{name}"].append(score[:, t])


def _score_codes(
    wm: WorldModel, codes: torch.Tensor, batch: dict[str, Any], out: dict[str, list[torch.Tensor]]
) -> None:
    """(B, h', w') predicted codes of the +0.5 s frame against the tokenizer's, and both decoded against the frame."""
    target = wm.vq_targets(batch)
    frame = batch["future_camera"][:, 0].float() / 255  # (B, 3, H, W)
    out["vq_code_acc"].append((codes == target).flatten(1).float().mean(1))
    out["vq_psnr"].append(psnr(wm.tokenizer.decode(codes), frame))
    out["vq_tokenizer_psnr"].append(psnr(wm.tokenizer.decode(target), frame))


def _score_bev(
    wm: WorldModel,
    grid: torch.Tensor,
    truth: torch.Tensor,
    plan: torch.Tensor,
    batch: dict[str, Any],
    out: dict[str, list[torch.Tensor]],
    counts: dict[str, list[torch.Tensor]],
) -> None:
    """Occupancy for the expert's and the policy's trajectory as two candidates of one scene, lights for the former."""
    candidates = torch.stack([truth, plan], 1).to(grid.device)  # (B, 2, T, 3)
    occ, lights = wm.decode(wm.encode_scene(grid), candidates)  # (B, 2, T, 2, Ho, Wo), (B, 2, T, 4)
    occ, lights = occ.float().cpu(), lights.float().cpu()
    target = wm.occupancy_targets(batch) > 0.5  # (B, T, 2, Ho, Wo)
    own = reframe(occ[:, 1].sigmoid().flatten(0, 1), wm.bev_head.occ, plan.flatten(0, 1), truth.flatten(0, 1))
    for name, pred in (("true_plan", occ[:, 0] > 0), ("own_plan", own.view_as(target) > 0.5)):
        counts[f"{name}_inter"].append((pred & target).sum((0, 2, 3, 4)))  # (T,)
        counts[f"{name}_union"].append((pred | target).sum((0, 2, 3, 4)))
    light_target = wm.light_targets(batch)  # (B, T)
    right = lights[:, 0].argmax(-1) == light_target  # (B, T)
    for name, t in REPORT_STEPS.items():
        out[f"light_acc_{name}"].append(right[:, t])
        out[f"light_acc_lit_{name}"].append(right[:, t][light_target[:, t] > 0])


def _reasoning(policy: WorldDrivePolicy, dataset: Dataset, indices: np.ndarray, batch_size: int) -> dict[str, float]:
    scores: dict[str, list[float]] = defaultdict(list)
    for batch in _batches(policy, dataset, indices, batch_size):
        for text, facts_json in zip(policy.generate_reasoning(batch), batch["facts"], strict=True):
            facts = SceneFacts.from_dict(json.loads(facts_json))
            fields = fact_accuracy(text, facts)
            for name, field in FACTS.items():
                scores[name].append(fields[field])
            scores["fact_meta_acc"].append(fields["speed_action"] * fields["lateral_action"])
            if facts.light is not None:
                scores["fact_light_acc_lit"].append(fields["light"])
            if facts.pedestrians:
                scores["fact_ped_acc_present"].append(fields["pedestrian_intent"])
    metrics = {name: float(np.mean(values)) for name, values in scores.items()}
    metrics["fact_acc"] = float(np.mean([metrics[f"fact_{name}_acc"] for name in ("light", "ped", "meta")]))
    return {**metrics, "fact_samples": float(len(indices))}
