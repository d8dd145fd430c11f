"""The ablation experiment in its tiny form: every run trains, one evaluation scores them all, the table adds up."""

import json

import pytest

from worlddrive.cli import main
from worlddrive.experiment import AblationConfig, aggregate, table_markdown


@pytest.mark.slow
def test_tiny_ablation_end_to_end(split_data_dir, tmp_path, capsys):
    out = tmp_path / "ablation"
    argv = ["experiment", "ablation", "--data", str(split_data_dir), "--out", str(out), "--config", "tiny"]
    argv += ["--variants", "action_only,frame", "--fractions", "0.5,1", "--seeds", "0", "--max-steps", "2"]
    argv += ["--batch-size", "4", "--families", "crosswalk", "--eval-seeds", "1000000-1000000", "--workers", "1"]
    assert main(argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("RESULT runs=4 ")
    result = json.loads((out / "ablation.json").read_text())
    assert [(r["variant"], r["fraction"]) for r in result["rows"]] == [
        ("action_only", 0.5),
        ("action_only", 1.0),
        ("frame", 0.5),
        ("frame", 1.0),
    ]
    assert all(0 <= r["ds"] <= 1 and r["ade"] > 0 for r in result["rows"])
    assert (out / "ablation.png").stat().st_size > 5000 and "| frame | 50% | 1 |" in (out / "ablation.md").read_text()
    assert (out / "eval" / "report.html").exists()


def test_aggregate_mean_and_spread():
    rows = [
        {"variant": "bev", "fraction": 1.0, "seed": s, "ds": ds, "heldout_ds": None, "ade": 1.0, "collisions": 0.0}
        for s, ds in enumerate([0.6, 0.8])
    ]
    (agg,) = aggregate(rows)
    assert agg["seeds"] == 2 and abs(agg["ds"] - 0.7) < 1e-9 and abs(agg["ds_spread"] - 0.1) < 1e-9
    assert agg["heldout_ds"] is None
    assert "0.700 ± 0.100" in table_markdown({"expert_ds": 0.9, "rows": rows})


def test_bad_ablation_config_is_named():
    with pytest.raises(KeyError, match="unknown ablation variant"):
        AblationConfig(data="x", variants=["dreams"], families=["crosswalk"], eval_seeds=[1])
    with pytest.raises(ValueError, match="fractions"):
        AblationConfig(data="x", fractions=[0.0], families=["crosswalk"], eval_seeds=[1])
