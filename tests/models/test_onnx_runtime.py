"""The decision's network exported to ONNX drives as the eager checkpoint does (int8: close to it, and says so)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from worlddrive.eval.drivers import load_policy
from worlddrive.models.onnx_runtime import EXPORT_FILE, ONNX_FILE, OnnxPolicy, export_onnx
from worlddrive.models.policy import CONFIG_FILE

pytestmark = pytest.mark.usefixtures("one_thread")

# the builtin's inputs: lateral head at the cautious pace, the map's speed limit and stop line, no ego history
FULL = {
    "lateral_head": True,
    "pace": "cautious",
    "speed_limit_input": True,
    "stop_line_input": True,
    "ego_history": False,
}


@pytest.fixture(scope="module")
def observations() -> list[dict]:
    """14 env steps of an expert-driven intersection_stop episode (the history's past frames fill after 10)."""
    from worlddrive.sim.env import DriveEnv

    env = DriveEnv({"family": "intersection_stop", "bev": False})
    try:
        obs, info = env.reset(seed=3)
        out = [obs]
        for _ in range(13):
            obs, *_, info = env.step(info["expert"].trajectory)
            out.append(obs)
        return out
    finally:
        env.close()


def _drive(policy, observations: list[dict]) -> np.ndarray:
    policy.reset()
    return np.stack([policy.predict(obs)["trajectory"] for obs in observations])  # (T, W, 3)


def test_the_exported_graph_drives_as_the_eager_checkpoint(make_policy, observations, tmp_path: Path) -> None:
    eager = make_policy(**FULL, wm_heads=("bev",), light_head=True, light_input=True, planner="imagine")
    eager.light_state.weight.data.normal_()  # the light head's colour steers the plan inside the graph too
    eager.save_pretrained(tmp_path / "eager")
    record = export_onnx(tmp_path / "eager", tmp_path / "fast")
    assert not record["int8"] and record["max_abs_error_m"] < 1e-3
    assert load_policy(str(tmp_path / "eager")).config.planner == "imagine"  # the eager one imagines,
    assert json.loads((tmp_path / "fast" / CONFIG_FILE).read_text())["planner"] == "fast"  # the graph is the fast path
    assert json.loads((tmp_path / "fast" / EXPORT_FILE).read_text()) == record
    fast = load_policy(str(tmp_path / "fast"))
    assert isinstance(fast, OnnxPolicy)
    np.testing.assert_allclose(
        _drive(fast, observations), _drive(load_policy(f"{tmp_path / 'eager'}@fast"), observations), atol=1e-4
    )
    # the pace is the folder's config's unless the spec names another, as for eager checkpoints
    assert load_policy(f"{tmp_path / 'fast'}@path").policy.config.pace == "path"
    # members on ONNX Runtime decide side by side in an ensemble, which drives their mean plan
    specs = [str(tmp_path / "fast"), f"{tmp_path / 'fast'}@path"]
    ensemble = load_policy("+".join(specs))
    members = np.mean([_drive(load_policy(s), observations) for s in specs], axis=0)
    np.testing.assert_allclose(_drive(ensemble, observations), members, atol=1e-6)


def test_an_arc_heads_path_and_pace_come_out_of_the_graph(make_policy, observations, tmp_path: Path) -> None:
    make_policy(**FULL, lateral_target="arc").save_pretrained(tmp_path / "eager")
    assert export_onnx(tmp_path / "eager", tmp_path / "fast")["max_abs_error_m"] < 1e-3
    eager, fast = (_drive(load_policy(str(tmp_path / name)), observations) for name in ("eager", "fast"))
    np.testing.assert_allclose(fast, eager, atol=1e-4)


def test_an_int8_export_is_smaller_and_drives_near_the_eager_plan(make_policy, observations, tmp_path: Path) -> None:
    make_policy(**FULL).save_pretrained(tmp_path / "eager")
    export_onnx(tmp_path / "eager", tmp_path / "fp32")
    record = export_onnx(tmp_path / "eager", tmp_path / "int8", int8=True)
    assert record["int8"] and 0 < record["max_abs_error_m"] < 5.0
    assert (tmp_path / "int8" / ONNX_FILE).stat().st_size < (tmp_path / "fp32" / ONNX_FILE).stat().st_size / 2
    plans = _drive(load_policy(str(tmp_path / "int8")), observations)
    eager = _drive(load_policy(str(tmp_path / "eager")), observations)
    assert np.isfinite(plans).all() and not np.array_equal(plans, eager)
    assert np.abs(plans - eager).max() < 5.0


def test_what_cannot_export_or_drive_is_refused_by_name(make_policy, observations, tmp_path: Path, monkeypatch) -> None:
    make_policy(action_expert="flow").save_pretrained(tmp_path / "flow")
    with pytest.raises(ValueError, match="only 'query' exports"):
        export_onnx(tmp_path / "flow", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    make_policy().save_pretrained(tmp_path / "eager")
    export_onnx(tmp_path / "eager", tmp_path / "fast")
    fast = load_policy(str(tmp_path / "fast"))
    bad = dict(observations[0], ego=np.full(7, np.nan, np.float32))
    with pytest.raises(ValueError, match="'ego' has non-finite"):
        fast.predict(bad)

    def broken(*args, **kwargs):
        raise RuntimeError("the exporter broke")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(RuntimeError, match="the exporter broke"):  # a failed export leaves the older one as it was
        export_onnx(tmp_path / "eager", tmp_path / "fast", int8=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eager", "fast", "flow"]
    assert not json.loads((tmp_path / "fast" / EXPORT_FILE).read_text())["int8"]
