from __future__ import annotations

import numpy as np
import pytest
import torch

from worlddrive.models import WorldDrivePolicy
from worlddrive.models.lateral import along_path
from worlddrive.sim.state import EGO_SPEED, EGO_STEER, EGO_YAW_RATE

pytestmark = pytest.mark.usefixtures("one_thread")


def test_lateral_loss_joins_the_total(make_policy, items: list) -> None:
    policy = make_policy(lateral_head=True)
    loss, logs = policy(policy.collate(items))
    assert logs["lateral_loss"] > 0
    expected = logs["action_loss"] + logs["lateral_loss"] + policy.config.lambda_lang * logs["lang_loss"]
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert policy.lateral.conv[0].weight.grad.abs().sum() > 0  # the camera pathway learns to steer


def test_the_path_never_sees_the_ego_history_and_the_action_expert_says_how_far(make_policy, items: list) -> None:
    policy = make_policy(lateral_head=True).eval()
    batch = policy.collate(items[:4])
    moved = {**batch, "past_trajectory": batch["past_trajectory"] + 3.0, "ego": batch["ego"].clone()}
    moved["ego"][:, EGO_STEER : EGO_YAW_RATE + 1] += 0.3
    speed = batch["ego"][:, EGO_SPEED]
    path = policy.denormalise(policy._lateral(batch), speed)  # (B, W, 3)
    torch.testing.assert_close(policy.denormalise(policy._lateral(moved), speed), path)
    plan = policy.predict_trajectory(batch)
    head, policy.lateral = policy.lateral, None
    own = policy.predict_trajectory(batch)  # the action expert's plan alone
    policy.lateral = head
    torch.testing.assert_close(plan, along_path(own, path))
    assert not torch.allclose(plan, own)


def test_along_path_walks_each_waypoints_distance_along_the_path() -> None:
    # 10 m straight on, then a left turn: (2, 0) ... (10, 0), (10, 2), (10, 4), (10, 6)
    xy = [(2.0, 0.0), (4.0, 0.0), (6.0, 0.0), (8.0, 0.0), (10.0, 0.0), (10.0, 2.0), (10.0, 4.0), (10.0, 6.0)]
    path = torch.tensor([[x, y, 0.0 if y == 0 else np.pi / 2] for x, y in xy])[None]  # (1, W, 3)
    plan = torch.zeros(1, 2, 8, 3)
    plan[0, 0, :, 0] = torch.arange(1, 9) * 1.5  # 1.5 m per waypoint, straight ahead: 12 m at the end
    plan[0, 1, :, 0] = torch.arange(1, 9) * 3.0  # 24 m: past the path's 16 m
    out = along_path(plan, path)
    torch.testing.assert_close(out[0, 0, 3], torch.tensor([6.0, 0.0, 0.0]))  # 6 m: still on the straight
    torch.testing.assert_close(out[0, 0, 7], torch.tensor([10.0, 2.0, np.pi / 2]))  # 12 m: 2 m into the turn
    torch.testing.assert_close(out[0, 1, 7], torch.tensor([10.0, 14.0, np.pi / 2]))  # on along the last heading
    jitter = torch.zeros(1, 1, 8, 3)
    jitter[0, 0, :, 0] = torch.tensor([0.1, -0.1, 0.1, -0.1, 0.1, -0.1, 0.1, -0.1])  # a standing plan's noise
    assert along_path(jitter, path)[0, 0, :, 0].max() <= 0.1 + 1e-6  # does not add up to a creep through the turn
    stopped = along_path(plan, torch.zeros(1, 8, 3))  # a path that goes nowhere: straight ahead, as far as the plan
    torch.testing.assert_close(stopped, plan)


def test_pace_path_goes_the_paths_own_distances_and_cautious_the_lesser() -> None:
    path = torch.zeros(1, 8, 3)
    path[0, :, 0] = torch.arange(1, 9) * 2.0  # 2 m per waypoint, straight on
    plan = torch.zeros(1, 1, 8, 3)
    plan[0, 0, :, 0] = torch.tensor([3.0, 6.0, 9.0, 10.0, 10.0, 10.0, 10.0, 10.0])  # ahead of it, then stops at 10 m
    torch.testing.assert_close(along_path(plan, path, "path")[0, 0], path[0])
    cautious = along_path(plan, path, "cautious")[0, 0, :, 0]
    torch.testing.assert_close(cautious, torch.tensor([2.0, 4.0, 6.0, 8.0, 10.0, 10.0, 10.0, 10.0]))
    with pytest.raises(ValueError, match="pace 'fast'"):
        along_path(plan, path, "fast")


def test_pace_needs_the_lateral_head() -> None:
    from worlddrive.models.config import PolicyConfig

    with pytest.raises(ValueError, match=r"PolicyConfig\.pace"):
        PolicyConfig.preset("tiny", pace="path")
    with pytest.raises(ValueError, match=r"PolicyConfig\.pace"):
        PolicyConfig.preset("tiny", lateral_head=True, pace="fastest")


def test_lateral_head_overfits_and_round_trips(make_policy, overfit, items: list, tmp_path) -> None:
    policy = make_policy(lateral_head=True, lambda_lang=0.0)
    batch = policy.collate(items)
    losses = overfit(policy, batch, 60, log="lateral_loss")
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5]), losses
    policy.eval()
    loaded = WorldDrivePolicy.from_pretrained(policy.save_pretrained(tmp_path / "p"))
    assert loaded.config.lateral_head
    torch.testing.assert_close(loaded.predict_trajectory(batch), policy.predict_trajectory(batch))


def test_lateral_head_fits_any_valid_image_size() -> None:
    # 40 x 72 is a valid PolicyConfig but not a multiple of 16: the strided convs round up, the MLP must match
    from worlddrive.models.config import PolicyConfig
    from worlddrive.models.lateral import LateralHead

    head = LateralHead(PolicyConfig.preset("tiny", image_size=(40, 72), patch_size=4, past_pool=1))
    frame = torch.zeros(2, 3, 128, 256, dtype=torch.uint8)
    assert head(frame, torch.zeros(2, 2), torch.zeros(2, dtype=torch.long)).shape == (2, 8, 3)
