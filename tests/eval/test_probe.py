"""The probe pairs each plan with the expert's plan from the same state, at the times asked for."""

import csv
import math

import numpy as np
import pytest

from worlddrive.eval.probe import HORIZONS_S, probe_episode


def test_the_expert_probed_against_itself_has_no_gap_even_through_a_stop_sign():
    # The shadow expert sees every step, so its memory (a stop sign served) stays the driver's: identical plans.
    probe = probe_episode("expert", "intersection_stop", 1, every_s=1.0)
    assert [r.t for r in probe.rows[:3]] == [0.0, 1.0, 2.0]
    assert len(probe.rows) == math.ceil(probe.result.steps / 10)
    assert any(r.control == "stop" for r in probe.rows) and min(r.speed for r in probe.rows) < 0.1
    assert all(r.plan_m == r.expert_m and r.accel == r.expert_accel for r in probe.rows)
    gaps = {"mean_gap_1s_m": 0.0, "mean_gap_4s_m": 0.0, "slower_share": 0.0}
    assert probe.summary() == {"replans": len(probe.rows), **gaps}


def test_a_constant_velocity_plan_is_read_at_its_horizons_and_overshoots_a_red(tmp_path):
    probe = probe_episode("constant-velocity", "intersection_signal", 3, every_s=0.5)
    first = probe.rows[0]
    assert first.plan_m == pytest.approx(tuple(first.speed * h for h in HORIZONS_S), abs=0.01)
    # The expert brakes for the yellow ahead (t = 4 s): the constant-velocity plan is far longer there.
    yellow = next(r for r in probe.rows if r.control == "yellow")
    assert yellow.expert_m[-1] < yellow.plan_m[-1] - 10 and yellow.expert_accel < -1.0
    probe.write_csv(tmp_path / "p.csv")
    with open(tmp_path / "p.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(probe.rows)
    assert float(rows[0]["plan_m_4s"]) == first.plan_m[-1] and float(rows[0]["t"]) == 0.0
    gaps = np.array([r.plan_m[-1] - r.expert_m[-1] for r in probe.rows])
    assert probe.summary()["mean_gap_4s_m"] == pytest.approx(gaps.mean())


def test_a_policy_is_compared_only_where_it_makes_a_fresh_plan():
    with pytest.raises(ValueError, match=r"multiple of 0\.5 s"):
        probe_episode("builtin", "straight", 0, every_s=0.3)
    with pytest.raises(ValueError, match=r"multiple of 0\.1 s"):
        probe_episode("expert", "straight", 0, every_s=0.05)
