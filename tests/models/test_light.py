"""The light head: the light ahead's colour from the full-resolution frame, a loss term of its own that can train
alone over a frozen policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worlddrive.models import WorldDrivePolicy
from worlddrive.models.light import LIGHTS, LightHead

pytestmark = pytest.mark.usefixtures("one_thread")


def test_any_frame_size_gives_one_logit_per_light_class() -> None:
    head = LightHead()
    for hw in ((128, 256), (64, 128), (40, 72)):
        assert head(torch.zeros(2, 3, *hw, dtype=torch.uint8)).shape == (2, len(LIGHTS))


def test_light_loss_joins_the_total_and_trains_alone_over_a_frozen_policy(make_policy, items: list) -> None:
    policy = make_policy(light_head=True)
    batch = policy.collate(items)
    loss, logs = policy(batch)
    expected = logs["action_loss"] + logs["light_loss"] + policy.config.lambda_lang * logs["lang_loss"]
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)
    for name, p in policy.named_parameters():
        p.requires_grad_(name.startswith("light."))  # `worlddrive train --train-only light`
    loss, logs = policy(batch)
    assert set(logs) == {"loss", "light_loss"} and logs["loss"] == pytest.approx(logs["light_loss"])
    loss.backward()
    assert policy.light.net[0].weight.grad.abs().sum() > 0


def test_light_head_overfits_red_against_green_and_round_trips(make_policy, tmp_path) -> None:
    # two frames alike but for a few lamp pixels, far apart in the frame from where the other one's lamp is
    frames = torch.full((4, 3, 64, 128), 90, dtype=torch.uint8)
    frames[0, 0, 10:12, 20:22] = frames[1, 0, 12:14, 100:102] = 255  # red lamps
    frames[2, 1, 10:12, 20:22] = frames[3, 1, 12:14, 100:102] = 255  # green lamps
    lights = torch.tensor([2, 2, 0, 0])[:, None].expand(4, 9)  # the dataset's codes: 0 green, 2 red, now first
    policy = make_policy(light_head=True)
    head = policy.light
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
    for _ in range(150):
        loss = head.loss(head(frames), lights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    probs = policy.light_probs({"camera": frames[:, None]})  # (B, 4)
    red, green = LIGHTS.index("red"), LIGHTS.index("green")
    assert (probs[:2, red] > 0.8).all() and (probs[2:, green] > 0.8).all(), probs
    loaded = WorldDrivePolicy.from_pretrained(policy.save_pretrained(tmp_path / "p"))
    assert loaded.config.light_head
    np.testing.assert_allclose(loaded.light_probs({"camera": frames[:, None]}), probs, atol=1e-6)
    assert make_policy().light_probs({"camera": frames[:, None]}) is None  # no head, no opinion


def test_light_input_starts_at_zero_and_then_steers_the_plan_by_the_colour(make_policy, items: list) -> None:
    policy = make_policy(light_head=True, light_input=True)
    batch = policy.collate(items)
    plan = policy.predict_trajectory(batch)
    policy.light.net[-1].bias.data += torch.tensor([0.0, 0.0, 0.0, 9.0])  # the head now says red for every frame
    torch.testing.assert_close(policy.predict_trajectory(batch), plan)  # zero-initialised: no say yet
    segments, _ = policy._prefix(batch)
    segments["state"].sum().backward()
    assert policy.light_state.weight.grad.abs().sum() > 0  # the decision's losses teach it
    assert all(p.grad is None for p in policy.light.parameters())  # detached: only the light loss trains the head
    policy.light_state.weight.data.normal_()
    assert not torch.allclose(policy.predict_trajectory(batch), plan)
    with pytest.raises(ValueError, match="light_input=True, expected False without the light head"):
        make_policy(light_input=True)
