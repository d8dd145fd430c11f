from __future__ import annotations

import numpy as np
import pytest
import torch

from worlddrive.models import WorldDrivePolicy
from worlddrive.sim.state import EGO_STEER, EGO_YAW_RATE

pytestmark = pytest.mark.usefixtures("one_thread")


def test_lateral_loss_joins_the_total(make_policy, items: list) -> None:
    policy = make_policy(lateral_head=True)
    loss, logs = policy(policy.collate(items))
    assert logs["lateral_loss"] > 0
    expected = logs["action_loss"] + logs["lateral_loss"] + policy.config.lambda_lang * logs["lang_loss"]
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert policy.lateral.conv[0].weight.grad.abs().sum() > 0  # the camera pathway learns to steer


def test_the_lateral_plan_never_sees_the_ego_history(make_policy, items: list) -> None:
    policy = make_policy(lateral_head=True).eval()
    batch = policy.collate(items[:4])
    plan = policy.predict_trajectory(batch)[:, 0]  # (B, W, 3)
    moved = {**batch, "past_trajectory": batch["past_trajectory"] + 3.0, "ego": batch["ego"].clone()}
    moved["ego"][:, EGO_STEER : EGO_YAW_RATE + 1] += 0.3
    other = policy.predict_trajectory(moved)[:, 0]
    assert not torch.allclose(plan[..., 0], other[..., 0])  # the action expert's x reads the history
    torch.testing.assert_close(plan[..., 1:], other[..., 1:])
    # and (y, yaw) are the head's, denormalised like every waypoint
    head = policy._lateral(batch) * policy.trajectory_std[:, 1:] + policy.trajectory_mean[:, 1:]
    torch.testing.assert_close(plan[..., 1:], head)


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
    assert head(frame, torch.zeros(2, 2), torch.zeros(2, dtype=torch.long)).shape == (2, 8, 2)
