from __future__ import annotations

import numpy as np
import pytest
import torch

from worlddrive.models import WorldDrivePolicy
from worlddrive.models.lateral import (
    ARC_MIN_SPEED,
    ARC_SCALE,
    along_path,
    arc_loss,
    arc_path,
    arc_stations,
    at_stations,
)
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


def test_an_arc_head_learns_the_path_where_the_expert_goes_and_its_pace_everywhere() -> None:
    # 10 m straight on, then a left turn, as above; and a car that stands still
    xy = [(2.0, 0.0), (4.0, 0.0), (6.0, 0.0), (8.0, 0.0), (10.0, 0.0), (10.0, 2.0), (10.0, 4.0), (10.0, 6.0)]
    turn = torch.tensor([[x, y, 0.0 if y == 0 else np.pi / 2] for x, y in xy])
    trajectory = torch.stack([turn, torch.zeros(8, 3)])  # (2, W, 3)
    stations = arc_stations(torch.tensor([0.0, 0.0]), torch.arange(1, 9) * 0.5)  # standing: the floor speed
    torch.testing.assert_close(stations[0], torch.arange(1, 9) * 0.5 * ARC_MIN_SPEED)  # 1 ... 8 m
    stations = torch.tensor([[3.0, 6.0, 9.0, 12.0, 15.0, 18.0, 21.0, 24.0]] * 2)
    poses, reached = at_stations(trajectory, stations)
    torch.testing.assert_close(poses[0, 3], torch.tensor([10.0, 2.0, np.pi / 2]))  # 12 m: 2 m into the turn
    assert reached[0].tolist() == [True] * 5 + [False] * 3  # the trajectory is 16 m long
    assert not reached[1].any()  # a standing future says nothing about the path
    covered = torch.stack([torch.arange(1, 9) * 2.0, torch.zeros(8)])  # (2, W) its pace: 2 m per waypoint, none
    truth = torch.cat([poses, covered[..., None]], -1)
    out = (truth - arc_path(torch.zeros_like(truth), stations)) / torch.tensor(ARC_SCALE)
    torch.testing.assert_close(arc_path(out, stations), truth)
    assert arc_loss(out, trajectory, stations) < 1e-10  # the output that gives the truth costs nothing
    far = out.clone()
    far[0, 5:, :3] += 5.0  # beyond where the expert went, and for the standing car, any pose goes
    far[1, :, :3] += 5.0
    assert arc_loss(far, trajectory, stations) < 1e-10
    late = out.clone()
    late[..., 3] += 1.0  # a pace 2 m off everywhere, the standing car's too
    assert arc_loss(late, trajectory, stations) == pytest.approx(1.0)
    # the paces read the arc head's distances, not its stations': "path" goes them along the path
    plan = torch.zeros(2, 1, 8, 3)
    plan[:, 0, :, 0] = 100.0
    paced = along_path(plan, arc_path(out, stations), "cautious")
    torch.testing.assert_close(paced[0, 0, 3], torch.tensor([8.0, 0.0, 0.0]))  # 8 m by 2 s
    torch.testing.assert_close(paced[1, 0], torch.zeros(8, 3))  # the standing car stands


def test_a_policy_drives_along_its_arc_heads_path_at_the_pace_it_is_given(make_policy, items: list) -> None:
    policy = make_policy(lateral_head=True, lateral_target="arc", pace="cautious").eval()
    batch = policy.collate(items[:4])
    path = policy.lateral_path(batch)  # (B, W, 4): poses at the stations, the distance by each waypoint's time
    stations = arc_stations(batch["ego"][:, EGO_SPEED], policy.waypoint_times)
    torch.testing.assert_close(path, arc_path(policy._lateral(batch), stations))
    plan = policy.predict_trajectory(batch)
    head, policy.lateral = policy.lateral, None
    own = policy.predict_trajectory(batch)
    policy.lateral = head
    torch.testing.assert_close(plan, along_path(own, path, "cautious"))
    policy.train()
    loss, logs = policy(policy.collate(items))
    assert logs["lateral_loss"] > 0
    loss.backward()
    assert policy.lateral.conv[0].weight.grad.abs().sum() > 0


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
    with pytest.raises(ValueError, match=r"PolicyConfig\.lateral_target"):
        PolicyConfig.preset("tiny", lateral_head=True, lateral_target="space")


@pytest.mark.parametrize("target", ["time", "arc"])
def test_lateral_head_overfits_and_round_trips(make_policy, overfit, items: list, tmp_path, target: str) -> None:
    policy = make_policy(lateral_head=True, lateral_target=target, lambda_lang=0.0)
    batch = policy.collate(items)
    losses = overfit(policy, batch, 60, log="lateral_loss")
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5]), losses
    policy.eval()
    loaded = WorldDrivePolicy.from_pretrained(policy.save_pretrained(tmp_path / "p"))
    assert loaded.config.lateral_head and loaded.config.lateral_target == target
    torch.testing.assert_close(loaded.predict_trajectory(batch), policy.predict_trajectory(batch))


def test_lateral_head_fits_any_valid_image_size() -> None:
    # 40 x 72 is a valid PolicyConfig but not a multiple of 16: the strided convs round up, the MLP must match
    from worlddrive.models.config import PolicyConfig
    from worlddrive.models.lateral import LateralHead

    head = LateralHead(PolicyConfig.preset("tiny", image_size=(40, 72), patch_size=4, past_pool=1))
    frame = torch.zeros(2, 3, 128, 256, dtype=torch.uint8)
    assert head(frame, torch.zeros(2, 2), torch.zeros(2, dtype=torch.long)).shape == (2, 8, 3)
