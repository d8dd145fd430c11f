"""The ablation experiment in its tiny form: every run trains, one evaluation scores them all, the table adds up."""

import json
import shlex

import numpy as np
import pytest

from worlddrive.cli import main
from worlddrive.experiment import AblationConfig, aggregate, paired_gains, run_name, table_markdown


@pytest.mark.slow
def test_tiny_ablation_end_to_end(split_data_dir, tmp_path, capsys):
    out = tmp_path / "ablation"
    argv = ["experiment", "ablation", "--data", f"{split_data_dir}*2", "--out", str(out), "--config", "tiny"]
    argv += ["--variants", "action_only,frame", "--fractions", "0.5,1", "--seeds", "0", "--max-steps", "2"]
    argv += ["--batch-size", "4", "--families", "crosswalk", "--eval-seeds", "1000000-1000000", "--workers", "1"]
    # a recipe other than the defaults: more flags for every run, a fine-tune of each, driven at another pace
    argv += ["--train-flags", "--no-ego-history --speed-limit-input", "--pace", "cautious"]
    argv += ["--finetune-flags", "--lateral-head --train-only lateral --max-steps 1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.strip().splitlines()[-1].startswith("RESULT runs=4 ")
    assert "--no-ego-history --speed-limit-input --out" in printed and "--train-only lateral --max-steps 1\n" in printed
    result = json.loads((out / "ablation.json").read_text())
    assert [r["run"] for r in result["rows"]][:2] == [
        "action_only_f0.5_s0_ft@cautious",
        "action_only_f1_s0_ft@cautious",
    ]
    finetuned = json.loads((out / "runs" / "frame_f1_s0_ft" / "policy" / "config.json").read_text())
    assert finetuned["lateral_head"] and finetuned["speed_limit_input"] and not finetuned["ego_history"]
    assert json.loads((out / "runs" / "frame_f1_s0_ft" / "result.json").read_text())["steps"] == 1
    assert [(r["variant"], r["fraction"]) for r in result["rows"]] == [
        ("action_only", 0.5),
        ("action_only", 1.0),
        ("frame", 0.5),
        ("frame", 1.0),
    ]
    assert all(0 <= r["ds"] <= 1 and r["ade"] > 0 for r in result["rows"])
    assert (out / "ablation.png").stat().st_size > 5000 and "| frame | 50% | 1 |" in (out / "ablation.md").read_text()
    assert (out / "eval" / "report.html").exists()
    gains = [(g["variant"], g["fraction"], g["against"], g["episodes"]) for g in result["gains"]]
    assert gains == [("frame", 0.5, 0.5, 1), ("frame", 0.5, 1.0, 1), ("frame", 1.0, 1.0, 1)]
    assert "| frame | 50% | 100% |" in (out / "ablation.md").read_text()
    # The recorded command is this experiment: rerun, it trains and drives nothing again and gives the same table.
    recorded = shlex.split(result["command"])
    assert recorded[0] == "worlddrive" and main(recorded[1:]) == 0
    again = capsys.readouterr().out
    assert again.count("already trained") == 8 and "trained 2 steps in" not in again
    assert json.loads((out / "ablation.json").read_text()) == result


def test_aggregate_mean_and_spread():
    rows = [
        {"variant": "bev", "fraction": 1.0, "seed": s, "ds": ds, "heldout_ds": None, "ade": 1.0, "collisions": 0.0}
        for s, ds in enumerate([0.6, 0.8])
    ]
    (agg,) = aggregate(rows)
    assert agg["seeds"] == 2 and abs(agg["ds"] - 0.7) < 1e-9 and abs(agg["ds_spread"] - 0.1) < 1e-9
    assert agg["heldout_ds"] is None
    assert "0.700 ± 0.100" in table_markdown({"expert_ds": 0.9, "rows": rows})


def test_paired_gains_compare_the_same_episodes_and_seeds():
    rng = np.random.default_rng(1)
    base = {s: rng.uniform(0, 1, 40) for s in (0, 1)}  # action-only's DS on 40 episodes, per training seed
    ds = {("action_only", f, s): base[s] * f for f in (0.25, 1.0) for s in (0, 1)}
    ds |= {("vq", 0.25, s): base[s] * 0.25 + 0.1 for s in (0, 1)}  # exactly +0.1 on every episode
    ds |= {("bev", 0.25, 0): base[0] * 0.25 + rng.normal(0, 0.2, 40)}  # noise, one seed only
    rows = [{"variant": v, "fraction": f, "seed": s, "run": run_name(v, f, s)} for v, f, s in ds]
    episodes = {run_name(*k): {("straight", 1000000 + i): float(x) for i, x in enumerate(v)} for k, v in ds.items()}
    episodes[run_name("vq", 0.25, 1)].pop(("straight", 1000000))  # a missing episode leaves every pair of that run
    gains = {(g["variant"], g["against"]): g for g in paired_gains(rows, episodes)}
    assert set(gains) == {("vq", 0.25), ("vq", 1.0), ("bev", 0.25), ("bev", 1.0)}
    same = gains["vq", 0.25]
    assert same["episodes"] == 39 and np.allclose([same["gain"], same["low"], same["high"]], 0.1)
    assert np.allclose(same["per_seed"], [0.1, 0.1])
    full = gains["vq", 1.0]  # against all the data: 0.1 - 0.75 * base, averaged over seeds and the 39 episodes
    keys = range(1, 40)
    want = np.mean([0.1 - 0.75 * base[s][i] for s in (0, 1) for i in keys])
    assert abs(full["gain"] - want) < 1e-9 and full["low"] < full["gain"] < full["high"]
    noisy = gains["bev", 0.25]
    assert noisy["per_seed"] == [noisy["gain"]] and noisy["high"] - noisy["low"] > 0.05
    table = table_markdown({"expert_ds": 0.9, "rows": [], "gains": list(gains.values())})
    assert "| vq | 25% | 25% | +0.100 | [+0.100, +0.100] | +0.100, +0.100 | 39 |" in table


def test_bad_ablation_config_is_named():
    with pytest.raises(KeyError, match="unknown ablation variant"):
        AblationConfig(data="x", variants=["dreams"], families=["crosswalk"], eval_seeds=[1])
    with pytest.raises(ValueError, match="fractions"):
        AblationConfig(data="x", fractions=[0.0], families=["crosswalk"], eval_seeds=[1])
    with pytest.raises(ValueError, match="train_flags may not set --seed, --out"):
        AblationConfig(data="x", train_flags="--seed 3 --out=y --lr 1e-3", families=["crosswalk"], eval_seeds=[1])
    with pytest.raises(ValueError, match="finetune_flags may not set --wm"):
        AblationConfig(data="x", finetune_flags="--data y --wm frame", families=["crosswalk"], eval_seeds=[1])
    with pytest.raises(ValueError, match="pace 'fast'"):
        AblationConfig(data="x", pace="fast", families=["crosswalk"], eval_seeds=[1])
