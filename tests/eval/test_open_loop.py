"""Open-loop metrics of tiny policies on one real episode: which metrics each head adds, exact values for perfect,
shifted and hand-made predictions, and the helpers on known inputs."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from worlddrive.data.record import MAX_AGENTS, PED_KIND
from worlddrive.eval.open_loop import (
    EGO_SIZE,
    _score_plans,
    open_loop_metrics,
    plan_collisions,
    pooled_iou,
    spread,
)
from worlddrive.models import WorldDrivePolicy
from worlddrive.models.vq import VQConfig, VQTokenizer
from worlddrive.models.world_model import OCCUPANCY_CHANNELS, WorldModel
from worlddrive.sim.state import EGO_SPEED, LIGHT_CONTROL, LIGHT_NAMES

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py
HEADS = ("vq", "frame", "bev")
TRAJECTORY = {
    "ade",
    "fde",
    "ade_1s",
    "ade_2s",
    "ade_3s",
    "plan_collision_rate",
    "expert_plan_collision_rate",
    "samples",
}
FRAME = {f"frame_{m}{t}" for m in ("psnr", "ssim") for t in ("", "_1s", "_2s")}
VQ = {"vq_code_acc", "vq_psnr", "vq_tokenizer_psnr"}
BEV = {f"bev_iou_{p}{t}" for p in ("true_plan", "own_plan") for t in ("", "_1s", "_2s")}
BEV |= {"light_acc_1s", "light_acc_2s"}  # no light_acc_lit_*: the crosswalk episode of tests/conftest.py has no light
FACTS = {f"fact_{f}_acc" for f in ("light", "ped", "meta", "speed", "lateral", "fields")}
FACTS |= {"fact_acc", "fact_samples", "fact_ped_acc_present"}  # no fact_light_acc_lit either


@pytest.fixture(scope="module")
def vq_tokenizer(items: list[dict[str, Any]]) -> VQTokenizer:
    """Untrained, its codebook k-means initialised on the items' frames."""
    torch.manual_seed(0)
    tokenizer = VQTokenizer(VQConfig(channels=(8, 16), codebook_size=32, codebook_dim=8))
    tokenizer.encode(torch.stack([it["future_camera"][0] for it in items]))
    return tokenizer


@pytest.fixture
def wm_policy(make_policy: Callable[..., WorldDrivePolicy], vq_tokenizer: VQTokenizer) -> WorldDrivePolicy:
    torch.manual_seed(0)
    wm = WorldModel(64, HEADS, tokenizer=vq_tokenizer, width=16, scene_channels=4)
    return make_policy(world_model=wm, wm_heads=HEADS)


def true_plan(shift: Any = (0.0, 0.0, 0.0)) -> Callable[..., torch.Tensor]:
    """A stand-in for `predict_trajectory` that returns the expert's trajectory moved by `shift`, (3,) or (8, 3)."""

    def predict(batch: dict[str, Any], num_samples: int = 1, generator: object = None) -> torch.Tensor:
        return (batch["trajectory"] + torch.as_tensor(shift, dtype=torch.float32))[:, None]

    return predict


def test_metrics_follow_the_heads(make_policy, wm_policy: WorldDrivePolicy, dataset) -> None:
    action_only = make_policy()
    metrics = open_loop_metrics(action_only, dataset, max_samples=8, batch_size=3, reason=False)
    assert set(metrics) == TRAJECTORY and metrics["samples"] == 8
    wm_policy.train()
    calls = []
    metrics = open_loop_metrics(
        wm_policy, dataset, 8, batch_size=3, progress=lambda *a: calls.append(a), reason_samples=3
    )
    assert set(metrics) == TRAJECTORY | FRAME | VQ | BEV | FACTS
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert metrics["fact_samples"] == 3 and calls == [(3, 8), (6, 8), (8, 8)] and wm_policy.training
    for name in ("plan_collision_rate", "frame_ssim", "vq_code_acc", "bev_iou_true_plan", "light_acc_1s", "fact_acc"):
        assert 0 <= metrics[name] <= 1, (name, metrics[name])
    assert open_loop_metrics(wm_policy, dataset, 8, batch_size=3, reason_samples=3) == metrics  # deterministic


def test_perfect_and_shifted_predictors(make_policy, dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = make_policy()
    monkeypatch.setattr(policy, "predict_trajectory", true_plan())
    perfect = open_loop_metrics(policy, dataset, batch_size=16, reason=False)
    assert perfect["ade"] == perfect["fde"] == perfect["ade_1s"] == 0.0
    assert perfect["plan_collision_rate"] == perfect["expert_plan_collision_rate"] == 0.0
    assert perfect["samples"] == len(dataset)
    monkeypatch.setattr(policy, "predict_trajectory", true_plan((3.0, -4.0, 0.3)))
    shifted = open_loop_metrics(policy, dataset, batch_size=16, reason=False)
    for name in ("ade", "fde", "ade_1s", "ade_2s", "ade_3s"):
        assert shifted[name] == pytest.approx(5.0, rel=1e-5)
    drifting = torch.zeros(8, 3)
    drifting[:, 1] = torch.arange(1.0, 9.0)  # 1 m more to the side at each waypoint
    monkeypatch.setattr(policy, "predict_trajectory", true_plan(drifting))
    drift = open_loop_metrics(policy, dataset, batch_size=16, reason=False)
    expected = {"ade_1s": 1.5, "ade_2s": 2.5, "ade_3s": 3.5, "ade": 4.5, "fde": 8.0}
    assert {k: drift[k] for k in expected} == pytest.approx(expected, rel=1e-5)


def box(x: float, y: float, yaw: float = 0.0, length: float = 4.0, width: float = 2.0, kind: int = 0) -> list[float]:
    return [x, y, yaw, 0.0, length, width, kind]


def test_plan_collisions_on_hand_made_boxes() -> None:
    """A plan along x at 2 m per waypoint (4 m/s), agents placed at chosen instants; the ego is 4.6 x 1.9 m."""
    T = 8
    plan = np.zeros((1, T, 3), np.float32)
    plan[0, :, 0] = 2.0 * np.arange(1, T + 1)  # at t + 0.5 k s the ego is at x = 2 k
    cases = {  # name: (instant index 0 ... 8, agent box, collides)
        "ahead at the same instant": (3, box(6.0 + 4.2, 0.0), True),  # gap 4.3 - 4.2 = 0.1 m of overlap
        "just clear ahead": (3, box(6.0 + 4.4, 0.0), False),
        "beside, lanes apart": (3, box(6.0, 2.0), False),  # 0.95 + 1.0 < 2.0
        "beside, touching": (3, box(6.0, 1.9), True),
        "there, but later": (6, box(6.0, 0.0), False),  # at 3 s the ego is at x = 12: 6 m apart
        "now, at the ego's place": (0, box(0.0, 0.0), False),  # instant 0 is not part of the plan
        "pedestrian on the path": (8, box(16.0, 0.0, 1.0, 0.5, 0.5, PED_KIND), True),
        "turned 90 degrees, its end reaching in": (2, box(4.0, 2.9, math.pi / 2), True),  # 2.9 - 2 < 0.95
    }
    agents = np.zeros((len(cases), T + 1, MAX_AGENTS, 7), np.float32)
    mask = np.zeros((len(cases), T + 1, MAX_AGENTS), bool)
    for i, (instant, row, _) in enumerate(cases.values()):
        agents[i, instant, 5] = row  # any slot
        mask[i, instant, 5] = True
    hits = plan_collisions(np.repeat(plan, len(cases), 0), agents, mask)
    assert dict(zip(cases, hits.tolist(), strict=True)) == {name: hit for name, (_, _, hit) in cases.items()}
    assert not plan_collisions(np.repeat(plan, len(cases), 0), agents, np.zeros_like(mask)).any()  # masked: ignored
    turned = plan.copy()
    turned[..., 2] = math.pi / 2  # the ego box turned across the road at x = 6 reaches 2.3 m to each side
    beside, one = np.zeros((1, T + 1, MAX_AGENTS, 7), np.float32), np.zeros((1, T + 1, MAX_AGENTS), bool)
    beside[0, 3, 0], one[0, 3, 0] = box(6.0, 2.0 + EGO_SIZE[0] / 2 - 0.1, math.pi / 2), True
    assert plan_collisions(turned, beside, one)[0] and not plan_collisions(plan, beside, one)[0]
    turned[..., 2] = math.pi / 4  # heading 45 degrees left; agents placed in its frame at instant 3 (ego at x = 6)
    c = math.sqrt(0.5)
    for ahead, left, rel_yaw, size, hit in [
        (2.0, 0.0, 0.0, (0.5, 0.5), True),
        (3.0, 0.0, 0.0, (0.5, 0.5), False),  # 2.3 + 0.25 < 3
        (0.0, 2.0, 0.0, (0.5, 0.5), False),
        (3.5, 2.0, math.pi / 4, (4.0, 2.0), True),  # a car turned towards the ego reaches its front corner
        (3.5, 2.0, -math.pi / 4, (4.0, 2.0), False),  # turned away, it does not
    ]:
        agent = np.zeros((1, T + 1, MAX_AGENTS, 7), np.float32)
        agent[0, 3, 0] = box(6.0 + c * (ahead - left), c * (ahead + left), math.pi / 4 + rel_yaw, *size)
        assert plan_collisions(turned, agent, one)[0] == hit, (ahead, left, rel_yaw)


def row_iou(pred: set[int], steps: range) -> float:
    """IoU pooled over horizons of full occupancy rows: `pred` each time, rows 0 ... 4 (t + 1) - 1 true at horizon t."""
    inter = sum(len(pred & set(range(4 * (t + 1)))) for t in steps)
    return inter / sum(len(pred | set(range(4 * (t + 1)))) for t in steps)


def test_world_model_metrics_on_known_frames_rasters_and_lights(
    wm_policy: WorldDrivePolicy, items: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Items made simple (flat grey future frames, vehicles filling the top rows of the future rasters, more each
    horizon, a straight expert, lights that differ between the horizons) and heads replaced by known outputs give
    metrics computable by hand."""
    straight = torch.stack([2.0 * torch.arange(1, 9), torch.zeros(8), torch.zeros(8)], -1)  # (8, 3)
    future_bev = torch.zeros_like(items[0]["future_bev"])  # (8, C, 128, 128)
    for t in range(8):
        future_bev[t, OCCUPANCY_CHANNELS[0], : 16 * (t + 1)] = 1  # vehicles: occupancy rows 0 ... 4 (t + 1) - 1 of 32
    green_at = ([2, 4], [1, 3])  # green at +1 and +2 s for two items, at +0.5 and +1.5 s for the others; else none
    lights = [torch.full((9,), -1).index_fill(0, torch.tensor(green_at[k >= 2]), 0) for k in range(len(items))]
    grey = torch.arange(100, 180, 10, dtype=torch.uint8)  # future frame k is flat grey 100 + 10 k
    data = [
        {**it, "trajectory": straight, "future_bev": future_bev, "lights": lights[k]}
        | {"future_camera": grey[:, None, None, None].expand_as(it["future_camera"])}
        for k, it in enumerate(items)
    ]
    wm = wm_policy.world_model
    occ_logits = torch.full((2, 32, 32), -10.0)
    occ_logits[0, :8] = occ_logits[0, 16:24] = 10.0  # predicted vehicles: rows 0 ... 7 and 16 ... 23

    def decode(scene: Any, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, K, T, _ = candidates.shape
        light_logits = torch.tensor([5.0, 0.0, 0.0, 0.0])  # always "none"
        return occ_logits.expand(B, K, T, -1, -1, -1), light_logits.expand(B, K, T, -1)

    monkeypatch.setattr(wm, "decode", decode)
    monkeypatch.setattr(wm, "predict_frames", lambda grid: torch.full((len(grid), 4, 3, 64, 128), 100 / 255 + 0.1))
    monkeypatch.setattr(wm, "predict_codes", lambda grid: torch.zeros(len(grid), 16, 32, dtype=torch.long))
    monkeypatch.setattr(wm, "vq_targets", lambda batch: torch.zeros(len(batch["trajectory"]), 16, 32, dtype=torch.long))
    monkeypatch.setattr(wm_policy, "predict_trajectory", true_plan())
    m = open_loop_metrics(wm_policy, data, batch_size=3, reason=False)
    predicted = set(range(8)) | set(range(16, 24))
    iou = {
        "": row_iou(predicted, range(8)),
        "_1s": row_iou(predicted, range(1, 2)),
        "_2s": row_iou(predicted, range(3, 4)),
    }
    expected = {f"bev_iou_{p}{t}": v for p in ("true_plan", "own_plan") for t, v in iou.items()}
    expected |= {"light_acc_1s": 0.75, "light_acc_2s": 0.75, "light_acc_lit_1s": 0.0, "light_acc_lit_2s": 0.0}
    truth, pred = grey[:4] / 255, 100 / 255 + 0.1  # (4,) horizons +0.5 ... +2 s
    frame_psnr = -20 * torch.log10((truth - pred).abs())
    frame_ssim = (2 * truth * pred + 1e-4) / (truth**2 + pred**2 + 1e-4)  # flat images: only the luminance term < 1
    for name, v in (("psnr", frame_psnr), ("ssim", frame_ssim)):
        expected |= {f"frame_{name}": v.mean().item(), f"frame_{name}_1s": v[1].item(), f"frame_{name}_2s": v[3].item()}
    expected |= {"vq_code_acc": 1.0, "vq_psnr": m["vq_tokenizer_psnr"]}
    assert {k: m[k] for k in expected} == pytest.approx(expected, rel=1e-4)
    # planned 2 m ahead of the truth, the prediction lies one 2 m row further ahead: rows 0 ... 6 and 15 ... 22
    monkeypatch.setattr(wm_policy, "predict_trajectory", true_plan((2.0, 0.0, 0.0)))
    m = open_loop_metrics(wm_policy, data, batch_size=3, reason=False)
    moved = set(range(7)) | set(range(15, 23))
    assert m["bev_iou_own_plan"] == pytest.approx(row_iou(moved, range(8)))
    assert m["bev_iou_own_plan_2s"] == pytest.approx(row_iou(moved, range(3, 4)))
    assert m["bev_iou_true_plan"] == pytest.approx(iou[""])


def test_reasoning_accuracy(make_policy, dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = make_policy()
    monkeypatch.setattr(policy, "generate_reasoning", lambda batch, max_tokens=None: list(batch["reasoning"]))
    m = open_loop_metrics(policy, dataset, batch_size=8, reason_samples=20)
    assert {k: m[k] for k in FACTS} == {**dict.fromkeys(FACTS, 1.0), "fact_samples": 20.0}
    monkeypatch.setattr(
        policy, "generate_reasoning", lambda batch, max_tokens=None: ["Keep the speed."] * len(batch["command"])
    )
    m = open_loop_metrics(policy, dataset, batch_size=8, reason_samples=20)
    assert m["fact_ped_acc"] < 1 and m["fact_meta_acc"] < 1 and m["fact_light_acc"] == 1  # no light, none named
    assert m["fact_ped_acc_present"] == 0
    assert m["fact_acc"] == pytest.approx((m["fact_light_acc"] + m["fact_ped_acc"] + m["fact_meta_acc"]) / 3)


def test_pooled_iou_and_spread() -> None:
    pred = torch.zeros(2, 4, 4, dtype=torch.bool)
    target = torch.zeros(2, 4, 4, dtype=torch.bool)
    pred[0, :2], target[0, 1:3] = True, True  # 8 and 8 cells, 4 shared
    pred[1, 0, 0] = True  # one more predicted cell, nowhere true
    inter, union = (pred & target).sum((1, 2)), (pred | target).sum((1, 2))  # per sample
    assert pooled_iou(inter, union) == pytest.approx(4 / 13)  # counts pooled, not the mean of 1/3 and 0
    assert pooled_iou(torch.zeros(3), torch.zeros(3)) == 1.0
    assert spread(10, 4).tolist() == [0, 2, 5, 7] and spread(3, 8).tolist() == [0, 1, 2]
    assert spread(5, None).tolist() == [0, 1, 2, 3, 4] and spread(0, 8).tolist() == []


def test_red_overrun_counts_plans_past_a_red_line_the_expert_stops_at() -> None:
    # Four samples, a stop line 20 m ahead; straight plans reaching `reach` metres at +4 s.
    def straight(reach: list[float]) -> torch.Tensor:
        x = torch.tensor(reach)[:, None] * torch.arange(1, 9) / 8  # (B, 8)
        return torch.stack([x, torch.zeros_like(x), torch.zeros_like(x)], dim=-1)

    red, green = LIGHT_NAMES.index("red"), LIGHT_NAMES.index("green")
    # the expert stops, stops, drives on (red: not counted), stops
    batch = {
        "trajectory": straight([19.0, 19.0, 30.0, 19.0]),
        "lights": torch.tensor([[red] * 9, [red] * 9, [red] * 9, [green] * 9]),
        "stop_control": torch.full((4,), LIGHT_CONTROL),
        "stop_distance": torch.full((4,), 20.0),
        "ego": torch.tensor([[0.0, 0.0, 0.0, 8.0, 0.0, 0.0, 0.0]]).repeat(4, 1),  # 8 m/s
        "agents": torch.zeros(4, 9, MAX_AGENTS, 8),
        "agent_mask": torch.zeros(4, 9, MAX_AGENTS, dtype=torch.bool),
    }
    out: dict[str, list[torch.Tensor]] = defaultdict(list)
    _score_plans(straight([18.0, 35.0, 35.0, 35.0]), batch, out)  # stops; runs it; (not counted) x 2
    assert torch.cat(out["red_overrun"]).tolist() == [0.0, 1.0]
    batch["ego"][:, EGO_SPEED] = 1.0  # creeping up to the line: not counted
    _score_plans(straight([18.0, 35.0, 35.0, 35.0]), batch, out)
    assert len(torch.cat(out["red_overrun"])) == 2
