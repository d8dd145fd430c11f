"""Imagination planning: candidates are the plan slowed down, risk is the world model's occupancy of the ego's
footprint, and the fastest safe candidate drives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worlddrive.eval.drivers import driver_name, load_policy, split_pace, split_planner
from worlddrive.models.light import LIGHTS
from worlddrive.models.world_model import Raster
from worlddrive.plan.imagine import (
    FRACTIONS,
    ImaginationPlanner,
    choose,
    footprint,
    must_stop,
    retime,
    stop_line_risk,
)
from worlddrive.sim.camera import BevConfig
from worlddrive.sim.geometry import distance_along
from worlddrive.sim.state import CONTROL_NAMES

pytestmark = pytest.mark.usefixtures("one_thread")


def _curve() -> torch.Tensor:
    """A plan (1, 8, 3) that speeds up through a left bend."""
    s = torch.cumsum(torch.linspace(4.0, 8.0, 8), 0)  # metres along it
    yaw = s / 60.0
    return torch.stack([60.0 * yaw.sin(), 60.0 * (1 - yaw.cos()), yaw], -1)[None]


def test_candidates_keep_the_path_and_cover_a_fraction_of_its_distance() -> None:
    plan = _curve()
    fractions = torch.tensor(FRACTIONS)
    cands = retime(plan, fractions)  # (1, K, 8, 3)
    assert cands.shape == (1, len(FRACTIONS), 8, 3)
    torch.testing.assert_close(cands[0, 0], plan[0], atol=1e-4, rtol=0)  # the plan itself first
    assert cands[0, -1, :, :2].abs().max() < 1e-5  # the last stands still
    full = distance_along(plan[0].numpy())  # (8,) metres along the plan at each waypoint
    for k, f in enumerate(FRACTIONS):
        np.testing.assert_allclose(distance_along(cands[0, k].numpy()), f * full, rtol=2e-3, atol=1e-3)  # chords
        # on the plan's own path: its chords of the circle of radius 60 m about (0, 60), within their sagitta
        radius = torch.hypot(cands[0, k, :, 0], cands[0, k, :, 1] - 60.0)
        torch.testing.assert_close(radius, torch.full_like(radius, 60.0), atol=0.15, rtol=0)


def test_the_footprint_covers_the_ego_box_and_not_what_follows_it() -> None:
    raster = Raster.of_bev(BevConfig(), (32, 32))  # the bev head's: 2 m cells, the ego 3/4 down
    mask = footprint(raster, (4.6, 1.9))
    xy = raster.centres()[mask]  # (n, 2)
    assert mask.sum() == 6 and xy[:, 0].min() >= -2.3 and xy[:, 0].max() <= 3.3 and xy[:, 1].abs().max() <= 1.95
    assert not footprint(raster, (4.6, 1.9))[25:].any()  # rows behind the ego's rear


def test_the_fastest_candidate_within_the_limit_is_chosen_else_the_least_risky() -> None:
    risk = torch.tensor([[0.9, 0.7, 0.2, 0.1], [0.1, 0.9, 0.9, 0.9], [0.9, 0.8, 0.95, 0.6]])
    assert choose(risk, 0.5).tolist() == [2, 0, 3]


@pytest.fixture(scope="module")
def obs() -> dict:
    """The first observation of a `straight` episode."""
    from worlddrive.sim.env import DriveEnv

    env = DriveEnv({"family": "straight", "bev": False})
    try:
        return env.reset(seed=0)[0]
    finally:
        env.close()


def _light(name: str) -> np.ndarray:
    return np.eye(len(LIGHTS))[LIGHTS.index(name)]


def test_a_candidate_risks_the_line_only_where_it_crosses_it() -> None:
    cands = retime(_curve(), torch.tensor(FRACTIONS))[0].numpy()  # (K, 8, 3): 48 m for the plan itself
    risk = stop_line_risk(cands, 20.0, 0.6)
    np.testing.assert_array_equal(risk, [0.6] * 4 + [0.0] * 4)  # 0.4 x 48 m stops short of the line


def test_the_rules_stop_at_red_at_a_stop_sign_and_at_yellow_while_a_comfortable_stop_is_possible() -> None:
    light, stop, yield_, none = (CONTROL_NAMES.index(c) for c in ("light", "stop", "yield", "none"))
    assert must_stop(light, _light("red"), 20.0, 10.0) == 1.0
    assert must_stop(light, 0.6 * _light("red") + 0.4 * _light("green"), 20.0, 10.0) == pytest.approx(0.6)
    assert must_stop(light, _light("green"), 20.0, 10.0) == 0.0
    assert must_stop(light, None, 20.0, 10.0) == 0.0  # no light head: the colour is unknown
    assert must_stop(light, _light("red"), -0.5, 10.0) == 0.0  # the front is past the line already
    # yellow: stop if 3.5 m/s^2 still stops the car before the line, else go on (the expert's rule)
    assert must_stop(light, _light("yellow"), 20.0, 10.0) == 1.0  # 14.8 m to stop
    assert must_stop(light, _light("yellow"), 20.0, 12.0) == 0.0  # 21.1 m: too late
    # a stop sign's line is reported until it is served: until then every candidate must stop short of it
    assert must_stop(stop, None, 20.0, 10.0) == 1.0 and must_stop(stop, None, -0.5, 0.0) == 0.0
    assert must_stop(yield_, _light("red"), 20.0, 10.0) == 0.0 and must_stop(none, _light("red"), 20.0, 10.0) == 0.0


def test_the_planner_stops_at_a_line_it_sees_red_and_at_a_stop_sign_not_yet_served(
    make_policy, obs, monkeypatch
) -> None:
    policy = make_policy(wm_heads=("bev",), light_head=True)
    planner = ImaginationPlanner(policy)
    monkeypatch.setattr(
        policy.world_model, "decode", lambda scene, c: (torch.full((1, c.shape[1], 8, 2, 32, 32), -30.0), None)
    )
    plan = planner.predict(obs)["samples"][0]
    line = 0.5 * float(np.hypot(*plan[-1, :2]))  # halfway along the plan's 4 s
    cases = (("light", "green", True), ("light", "red", False), ("stop", "green", False), ("yield", "red", True))
    for control, colour, crosses in cases:
        monkeypatch.setattr(policy, "light_probs", lambda batch, c=colour: torch.from_numpy(_light(c))[None])
        planner.reset()
        pred = planner.predict({**obs, "stop_distance": np.float32(line), "stop_control": CONTROL_NAMES.index(control)})
        assert (float(np.hypot(*pred["trajectory"][-1, :2])) > line) == crosses, (control, colour, pred["fraction"])
        if not crosses:
            assert pred["risk"][0] == 1.0  # the plan itself crosses
            assert pred["fraction"] == pytest.approx(0.4)  # the fastest candidate that stays behind the line


def test_the_planner_slows_down_for_what_the_world_model_sees_in_its_path(make_policy, obs, monkeypatch) -> None:
    policy = make_policy(wm_heads=("bev",))
    planner = ImaginationPlanner(policy)
    wm = policy.world_model
    decode = wm.decode

    def blocked_until(k_safe: int):
        def fake(scene, candidates):  # occupied footprints for every candidate faster than k_safe
            occ, lights = decode(scene, candidates)
            occ = torch.full_like(occ, -30.0)
            occ[:, :k_safe, :, 0][..., planner.footprint] = 30.0
            return occ, lights

        return fake

    for k_safe in (0, 3, len(FRACTIONS) - 1):
        monkeypatch.setattr(wm, "decode", blocked_until(k_safe))
        planner.reset()
        pred = planner.predict(obs)
        assert pred["chosen"] == k_safe and pred["samples"].shape == (len(FRACTIONS), 8, 3)
        np.testing.assert_array_equal(pred["trajectory"], pred["samples"][k_safe])
        assert (pred["risk"][:k_safe] > 0.99).all() and (pred["risk"][k_safe:] < 0.01).all()
    policy.reset()
    np.testing.assert_array_equal(pred["samples"][0], policy.predict(obs)["trajectory"])  # the fast path's plan


def test_imagination_is_named_and_needs_a_bev_head(make_policy, tmp_path) -> None:
    from worlddrive.models import WorldDrivePolicy

    assert split_planner("runs/x@cautious@imagine") == ("runs/x@cautious", "imagine")
    assert split_planner("runs/x@fast") == ("runs/x", "fast") and split_planner("runs/x@path") == ("runs/x@path", None)
    assert split_pace("runs/x@cautious@imagine") == ("runs/x", "cautious")
    assert split_pace("runs/x@imagine") == ("runs/x", None)
    assert driver_name("runs/x@cautious@imagine") == "x@cautious@imagine" and driver_name("runs/x@fast") == "x@fast"
    make_policy(wm_heads=("bev",), lateral_head=True).save_pretrained(tmp_path / "bev")
    planner = load_policy(f"{tmp_path / 'bev'}@path@imagine")
    assert isinstance(planner, ImaginationPlanner) and planner.config.pace == "path"
    # a checkpoint that plans by imagination says so in its config; @fast drives its plan as the network gives it
    make_policy(wm_heads=("bev",), planner="imagine").save_pretrained(tmp_path / "imagines")
    assert isinstance(load_policy(str(tmp_path / "imagines")), ImaginationPlanner)
    assert isinstance(load_policy(f"{tmp_path / 'imagines'}@fast"), WorldDrivePolicy)
    make_policy().save_pretrained(tmp_path / "ao")
    with pytest.raises(ValueError, match=r"with planner 'imagine': .* expected 'fast' without the bev head"):
        load_policy(f"{tmp_path / 'ao'}@imagine")
    with pytest.raises(ValueError, match="imagination needs the bev world-model head"):
        ImaginationPlanner(make_policy())


def test_risk_is_calibrated_by_the_weight_the_head_was_trained_with(make_policy, monkeypatch) -> None:
    # an occupied-cell weight w puts the head's logit log(w) above the probability's: imagination takes it back
    for weight in (1.0, 10.0):
        policy = make_policy(wm_heads=("bev",), occ_pos_weight=weight)
        assert policy.world_model.occ_pos_weight == weight  # what the loss weighs occupied cells by
        monkeypatch.setattr(policy, "plan_and_scene", lambda batch: (_curve(), None))

        def unsure(scene, candidates):  # logit 0 in every cell
            return torch.zeros(*candidates.shape[:2], 8, 2, 32, 32), None

        monkeypatch.setattr(policy.world_model, "decode", unsure)
        occupancy = ImaginationPlanner(policy).imagine({})[1]
        torch.testing.assert_close(occupancy, torch.full_like(occupancy, 1 / (1 + weight)))


def test_a_drive_gif_shows_what_imagination_saw(make_policy, tmp_path) -> None:
    import imageio.v3 as iio

    from worlddrive.cli import main

    make_policy(wm_heads=("bev",)).save_pretrained(tmp_path / "bev")
    for spec, gif in ((tmp_path / "bev", "fast.gif"), (f"{tmp_path / 'bev'}@imagine", "imagined.gif")):
        argv = ["drive", "--policy", str(spec), "--family", "straight", "--seed", "1000001", "--every", "25"]
        assert main([*argv, "--out", str(tmp_path / gif)]) == 0
    fast, imagined = (iio.imread(tmp_path / gif) for gif in ("fast.gif", "imagined.gif"))  # (N, H, W, 3)
    assert imagined.shape[:2] == fast.shape[:2] and imagined.shape[2] == fast.shape[2] + 64  # a column of +1 ... +4 s
