"""Closed-loop episodes: a crashing driver is recorded as a failure with its traceback, and counts as 0."""

from worlddrive.eval.closed_loop import ExpertDriver, family_table, run_episode


class Crashing(ExpertDriver):
    name = "crashing"

    def act(self, state):
        if state.t > 1.0:
            raise RuntimeError("policy exploded")
        return super().act(state)


def test_crashing_driver_is_a_recorded_failure():
    bad = run_episode("crosswalk", 0, Crashing())
    assert bad.score is None and "policy exploded" in bad.error and bad.steps >= 10
    good = run_episode("crosswalk", 0)
    rows = family_table([bad, good])
    assert rows[0]["errors"] == 1 and rows[0]["episodes"] == 2
    assert abs(rows[0]["ds"] - good.score.ds / 2) < 1e-9  # the failure scores 0, it does not vanish


def test_expert_progress_sets_ep():
    own = run_episode("straight", 2)
    assert own.score.ep == 1.0
    half = run_episode("straight", 2, expert_progress_m=own.progress_m * 2)
    assert abs(half.score.ep - 0.5) < 1e-6
