from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from worlddrive.cli import main
from worlddrive.eval.closed_loop import EpisodeResult
from worlddrive.eval.compare import compare, paired_difference, policy_scores
from worlddrive.eval.evaluate import RECORDS, _record_line
from worlddrive.eval.metrics import DriveScore

FAMILIES = ("straight", "crosswalk", "heldout_city")  # heldout_city: the held-out layout family


def _score(ds: float) -> DriveScore:
    return DriveScore(1, 1, 1, 1, 1, ds, 1, 1, ds, 0, 0, 0, 0, 0, 0, 0, 0, 0, 250)


def eval_dir(root: Path, ds: dict[str, dict[tuple[str, int], float]], replan_every: int = 5) -> Path:
    """A folder as `worlddrive eval --out` leaves it: records of each policy (spec: {(family, seed): DS}), summary."""
    root.mkdir(parents=True)
    lines = [
        _record_line(spec, replan_every, EpisodeResult(family, seed, spec, _score(d), 100.0, 200.0, 250))
        for spec, episodes in ds.items()
        for (family, seed), d in episodes.items()
    ]
    (root / RECORDS).write_text("".join(lines))
    (root / "summary.json").write_text(json.dumps({"replan_every": replan_every}))
    return root


def _episodes(values) -> dict[tuple[str, int], float]:
    return {(FAMILIES[i % 3], 1000 + i): float(v) for i, v in enumerate(values)}


def test_paired_difference_averages_seeds_per_episode_on_shared_episodes() -> None:
    rng = np.random.default_rng(0)
    base = [_episodes(rng.uniform(0, 1, 30)) for _ in range(2)]
    new = [{k: v + 0.1 for k, v in base[0].items()}, {k: v - 0.3 for k, v in base[1].items()}]
    new[1].pop(("straight", 1000))  # an episode missing under one policy leaves the comparison, for every seed
    g = paired_difference(list(zip(new, base, strict=True)))
    assert g["episodes"] == 29 and np.allclose(g["per_seed"], [0.1, -0.3])
    assert np.allclose([g["gain"], g["low"], g["high"]], -0.1)  # the same on every episode: no bootstrap spread
    noisy = paired_difference([({k: v + rng.normal(0, 0.2) for k, v in base[0].items()}, base[0])])
    assert noisy["low"] < noisy["gain"] < noisy["high"] and noisy["high"] - noisy["low"] > 0.05
    assert paired_difference([({("straight", 1): 1.0}, {("straight", 2): 1.0})]) is None


def test_compare_pairs_eval_folders_per_seed_and_splits_the_heldout_layout(tmp_path: Path) -> None:
    base = _episodes(np.linspace(0.2, 0.8, 12))
    a = eval_dir(tmp_path / "a", {"expert": {k: 1.0 for k in base}, "runs/ao_path@cautious": base})
    b = eval_dir(
        tmp_path / "b", {"runs/x_path": {k: v + (0.3 if k[0] == "heldout_city" else 0.1) for k, v in base.items()}}
    )
    result = compare([str(a)], [str(b)])
    assert result["training_layouts"]["episodes"] == 8 and result["heldout_layout"]["episodes"] == 4
    assert result["training_layouts"]["gain"] == pytest.approx(0.1)
    assert result["heldout_layout"]["gain"] == pytest.approx(0.3)
    assert {f: g["episodes"] for f, g in result["families"].items()} == {f: 4 for f in FAMILIES}
    assert result["families"]["crosswalk"]["gain"] == pytest.approx(0.1)
    assert policy_scores(f"{a}:expert") == {k: 1.0 for k in base}


def test_compare_names_its_bad_inputs(tmp_path: Path) -> None:
    base = _episodes([0.5] * 6)
    two = eval_dir(tmp_path / "two", {"runs/a_path": base, "runs/b_path": base})
    one = eval_dir(tmp_path / "one", {"runs/a_path": base})
    with pytest.raises(ValueError, match="2 learned policies"):
        policy_scores(str(two))
    with pytest.raises(KeyError, match="no policy 'c_path'"):
        policy_scores(f"{two}:c_path")
    with pytest.raises(FileNotFoundError, match=r"summary\.json"):
        policy_scores(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="as many"):
        compare([str(one)], [str(one), f"{two}:a_path"])


def test_compare_command_prints_the_result_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = _episodes([0.5] * 6)
    a = eval_dir(tmp_path / "a", {"runs/a_path": base})
    b = eval_dir(tmp_path / "b", {"runs/b_path": {k: v + 0.25 for k, v in base.items()}})
    assert main(["compare", "--base", str(a), "--new", str(b)]) == 0
    out = capsys.readouterr().out
    assert "training-layout families: DS +0.2500" in out
    assert out.strip().splitlines()[-1].startswith("RESULT gain=0.25 low=0.25 high=0.25 episodes=4 layout_gain=0.25")
    with pytest.raises(SystemExit, match=r"summary\.json"):
        main(["compare", "--base", str(tmp_path / "nothing"), "--new", str(b)])
