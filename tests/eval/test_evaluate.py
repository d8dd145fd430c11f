"""`worlddrive eval` with a learned policy beside the baselines: tables, records, GIFs, resume, bad checkpoints."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from worlddrive.cli import main
from worlddrive.eval.evaluate import EvalConfig, evaluate

pytestmark = pytest.mark.usefixtures("one_thread")
SEEDS = ["--seeds", "1000000-1000000"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer, dataset):
    """An untrained tiny policy, saved as `worlddrive train` saves one: RUN/policy."""
    from worlddrive.models import PolicyConfig, WorldDrivePolicy

    run = tmp_path_factory.mktemp("tiny_run")
    torch.manual_seed(0)
    WorldDrivePolicy(PolicyConfig.preset("tiny"), tokenizer, dataset.stats).save_pretrained(run / "policy")
    return run


def result_line(out: str) -> dict[str, str]:
    last = out.strip().splitlines()[-1]
    assert last.startswith("RESULT "), last
    return dict(kv.split("=") for kv in last.split()[1:])


def test_eval_learned_policy_with_baselines(checkpoint, split_data_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["eval", "--policy", f"{checkpoint},constant-velocity,idm", "--families", "crosswalk", *SEEDS]
    argv += ["--workers", "1", "--gallery", "1", "--data", str(split_data_dir), "--out", str(out)]
    assert main(argv) == 0
    res = result_line(capsys.readouterr().out)
    assert res["policy"] == checkpoint.name and float(res["expert_ds"]) > 0.5
    assert abs(float(res["ds_ratio"]) - float(res["ds"]) / float(res["expert_ds"])) < 1e-3
    assert "ade" in res
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["policies"]) == ["expert", checkpoint.name, "constant-velocity", "idm"]
    assert summary["policies"]["expert"]["ds_ratio"] is None
    records = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert sorted(r["driver"] for r in records) == sorted(summary["policies"])
    gifs = [g for g in summary["gallery"] if (out / g["gif"]).stat().st_size > 1000]
    assert len(gifs) == 4 and [g["ds"] for g in gifs] == sorted(g["ds"] for g in gifs)
    assert (out / "report.html").exists()


def test_eval_resumes_without_rerunning_recorded_episodes(tmp_path):
    cfg = EvalConfig(["constant-velocity"], ["crosswalk"], [1000000, 1000001], gallery=0)
    first = evaluate(cfg, tmp_path)
    with open(tmp_path / "episodes.jsonl", "a") as fh:
        fh.write('{"spec": "expert", "fam')  # a line torn by a kill mid-write
    ran = []
    again = evaluate(cfg, tmp_path, progress=lambda desc, total: ran.append(total) or (lambda: None))
    assert ran == [0, 0] and again == first


def test_a_folder_evaluated_with_another_replanning_interval_is_refused(tmp_path):
    evaluate(EvalConfig(["constant-velocity"], ["crosswalk"], [1000000], gallery=0, replan_every=1), tmp_path)
    with pytest.raises(ValueError, match="--replan-every 1, not 5"):
        evaluate(EvalConfig(["constant-velocity"], ["crosswalk"], [1000000], gallery=0, replan_every=5), tmp_path)


def test_policy_that_raises_is_a_recorded_failure(checkpoint, tmp_path):
    broken = tmp_path / "broken"
    (broken / "policy").mkdir(parents=True)
    for f in (checkpoint / "policy").iterdir():
        (broken / "policy" / f.name).write_bytes(f.read_bytes())
    weights = load_file(broken / "policy" / "model.safetensors")
    weights = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in weights.items()}
    save_file(weights, broken / "policy" / "model.safetensors")
    summary = evaluate(EvalConfig([str(broken)], ["crosswalk"], [1000000], gallery=0), tmp_path / "eval")
    pol = summary["policies"]["broken"]
    assert pol["errors"] == 1 and pol["ds"] == 0.0
    record = json.loads((tmp_path / "eval" / "episodes.jsonl").read_text().splitlines()[-1])
    assert "Traceback" in record["error"] and "NaN" in record["error"]


def test_mismatched_checkpoint_is_named(checkpoint, tmp_path):
    bad = tmp_path / "bad" / "policy"
    bad.mkdir(parents=True)
    for f in (checkpoint / "policy").iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    config = json.loads((bad / "config.json").read_text())
    config["d_model"] = 2 * config["d_model"]
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match=r"model\.safetensors"):
        main(["eval", "--policy", str(bad.parent), "--families", "crosswalk", *SEEDS, "--out", str(tmp_path / "e")])
    with pytest.raises(SystemExit, match="no checkpoint there"):
        main(["eval", "--policy", str(tmp_path / "nowhere"), *SEEDS, "--out", str(tmp_path / "e")])
