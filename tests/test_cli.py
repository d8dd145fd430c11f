"""The `worlddrive` commands as a user runs them: outputs appear, RESULT lines print, bad input is named."""

import json
import shutil

import imageio.v3 as iio
import pytest
import torch

from worlddrive.cli import main
from worlddrive.models.config import PolicyConfig


def result_line(out: str) -> dict[str, str]:
    last = out.strip().splitlines()[-1]
    assert last.startswith("RESULT "), last
    return dict(kv.split("=") for kv in last.split()[1:])


def test_generate_validate_show(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["generate", "--families", "crosswalk", "--episodes", "1", "--seed", "0", "--out", str(data)]) == 0
    res = result_line(capsys.readouterr().out)
    assert int(res["episodes"]) == 1 and int(res["samples"]) > 10
    assert main(["dataset", "validate", str(data)]) == 0
    assert result_line(capsys.readouterr().out)["ok"] == "1"
    sheet = tmp_path / "sheet.png"
    assert main(["dataset", "show", str(data), "--out", str(sheet), "-n", "4"]) == 0
    assert sheet.stat().st_size > 10_000


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "--families", "moon", "--episodes", "1", "--out", "X"], "unknown family moon"),
        (["generate", "--families", "crosswalk", "--episodes", "0", "--out", "X"], "--episodes must be positive"),
        (["generate", "--takeover-seconds", "3", "--out", "X"], "--takeover-seconds must look like A-B"),
        (["generate", "--family-config", "{ego_speed: 1}", "--out", "X"], "--family-config is not JSON"),
        (["generate", "--family-config", "[1, 16]", "--out", "X"], "--family-config must be a JSON object"),
        (["eval", "--families", "crosswalk", "--episodes", "0", "--out", "X"], "--episodes must be positive"),
        (["eval", "--policy", "nope", "--out", "X"], "--policy .nope.: no checkpoint there"),
        (["eval", "--seeds", "9-3", "--out", "X"], "empty or negative"),
        (["drive", "--family", "moon"], "unknown family moon"),
        (["export", "--policy", "builtin+builtin", "--out", "X"], "export one checkpoint at a time"),
        (["export", "--policy", "nope", "--out", "X"], "--policy .nope.: no checkpoint there"),
        (["export", "--policy", "builtin@imagine", "--out", "X"], "@imagine plans with the eager world model"),
    ],
)
def test_bad_arguments_are_named(argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=message):
        main(argv)


def test_unwritable_output_folder_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit, match="not writable"):
        main(["eval", "--policy", "expert", "--seeds", "1000000-1000000", "--out", str(blocker / "eval")])


def test_drive_writes_gif_and_scores(tmp_path, capsys):
    gif = tmp_path / "drive.gif"
    assert main(["drive", "--family", "crosswalk", "--seed", "1", "--out", str(gif), "--every", "5"]) == 0
    res = result_line(capsys.readouterr().out)
    assert 0.0 <= float(res["ds"]) <= 1.0 and float(res["progress_m"]) > 20
    frames = iio.imread(gif, index=None)
    assert frames.ndim == 4 and frames.shape[0] > 10 and frames.shape[-1] == 3


def test_eval_expert_table_and_records(tmp_path, capsys):
    out = tmp_path / "eval"
    seeds = "1000000-1000001"
    argv = ["eval", "--policy", "expert", "--families", "crosswalk,cut_in", "--seeds", seeds, "--gallery", "0"]
    assert main([*argv, "--workers", "1", "--out", str(out)]) == 0
    res = result_line(capsys.readouterr().out)
    assert int(res["episodes"]) == 4 and res["errors"] == "0" and res["policy"] == "expert"
    rows = json.loads((out / "summary.json").read_text())["policies"]["expert"]["families"]
    assert [r["family"] for r in rows] == ["crosswalk", "cut_in"]
    assert abs(float(res["ds"]) - sum(r["ds"] for r in rows) / 2) < 1e-3
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 4
    assert main([*argv, "--policy", "constant-velocity,idm", "--workers", "1", "--out", str(out)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("RESULT ")]
    assert [dict(kv.split("=") for kv in line.split()[1:])["policy"] for line in lines] == ["idm", "constant-velocity"]


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    """The main job's tiny form: every step runs and the report names both trained policies."""
    argv = ["demo", "--out", str(tmp_path), "--config", "tiny", "--train-steps", "2", "--episodes", "1"]
    assert main([*argv, "--eval-episodes", "1", "--workers", "2"]) == 0
    for name in ("contact_sheet.png", "data/info.json", "runs/world_model/policy/config.json", "eval/report.html"):
        assert (tmp_path / name).exists(), name
    policies = json.loads((tmp_path / "eval" / "summary.json").read_text())["policies"]
    assert list(policies) == ["expert", "world_model", "action_only", "constant-velocity", "idm"]
    assert "report: " in capsys.readouterr().out


def test_library_errors_become_one_line_messages(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit, match=r"^error: .*not writable"):
        main(["generate", "--families", "crosswalk", "--episodes", "1", "--out", str(blocker / "data")])
    with pytest.raises(SystemExit, match=r"^error: .*info\.json"):
        main(["dataset", "show", str(tmp_path), "--out", str(tmp_path / "s.png")])


def test_train_writes_a_loadable_policy_and_resumes(split_data_dir, tmp_path, capsys):
    from worlddrive.models import WorldDrivePolicy

    data = split_data_dir
    run = tmp_path / "run"
    argv = ["train", "--config", "tiny", "--data", str(data), "--out", str(run), "--batch-size", "4"]
    assert main([*argv, "--max-steps", "4"]) == 0
    assert result_line(capsys.readouterr().out)["steps"] == "4"
    assert main([*argv, "--max-steps", "6"]) == 0  # continues from step 4 with the saved tokenizer and weights
    first = capsys.readouterr().out
    assert result_line(first)["steps"] == "6" and "open loop on the val split" in first
    assert main([*argv, "--max-steps", "6"]) == 0  # finished: its recorded result, no data, training or open loop
    again = capsys.readouterr().out
    assert "already trained (6 steps)" in again and "open loop" not in again
    assert result_line(again) == result_line(first)
    policy = WorldDrivePolicy.from_pretrained(run / "policy")
    assert policy.config.d_model == 64
    with pytest.raises(SystemExit, match="data-fraction"):
        main([*argv, "--data-fraction", "0"])


def test_fine_tuning_from_a_checkpoint_on_a_union_of_datasets(split_data_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    data = str(split_data_dir)
    argv = ["train", "--config", "tiny", "--batch-size", "4", "--max-steps", "2", "--open-loop-samples", "0"]
    assert main([*argv, "--data", data, "--out", str(tmp_path / "base")]) == 0
    start = load_file(tmp_path / "base" / "policy" / "model.safetensors")
    tuned = tmp_path / "tuned"
    assert main([*argv, "--data", f"{data},{data}", "--out", str(tuned), "--init", str(tmp_path / "base")]) == 0
    assert result_line(capsys.readouterr().out)["steps"] == "2"
    after = load_file(tuned / "policy" / "model.safetensors")
    assert after.keys() == start.keys() and any(not (after[k] == start[k]).all() for k in start)
    for name in ("tokenizer.json", "stats.json", "config.json"):  # the checkpoint's, not rebuilt from the data
        assert (tuned / "policy" / name).read_text() == (tmp_path / "base" / "policy" / name).read_text()
    hidden = tmp_path / "hidden"  # a training-only field may change in a fine-tune, and the run records it
    assert (
        main(
            [*argv, "--data", data, "--out", str(hidden), "--init", str(tmp_path / "base"), "--history-dropout", "0.5"]
        )
        == 0
    )
    assert json.loads((hidden / "policy" / "config.json").read_text())["history_dropout"] == 0.5
    with pytest.raises(SystemExit, match=r"not the model these flags describe .*'wm_heads': \(\[\], \['frame'\]\)"):
        main([*argv, "--data", data, "--out", str(tmp_path / "bad"), "--init", str(tmp_path / "base"), "--wm", "frame"])


def test_fine_tuning_can_switch_on_the_lateral_and_light_heads(split_data_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    data, base, grown = str(split_data_dir), tmp_path / "base", tmp_path / "grown"
    argv = ["train", "--config", "tiny", "--batch-size", "4", "--max-steps", "2", "--open-loop-samples", "0"]
    assert main([*argv, "--data", data, "--out", str(base)]) == 0
    # lr 0: the checkpoint's tensors must come through unchanged, next to the new head's
    assert main([*argv, "--data", data, "--out", str(grown), "--init", str(base), "--lateral-head", "--lr", "0"]) == 0
    assert "['lateral_head'] switched on" in capsys.readouterr().out
    start, after = (load_file(run / "policy" / "model.safetensors") for run in (base, grown))
    assert start.keys() < after.keys() and all(k.startswith("lateral.") for k in after.keys() - start.keys())
    assert all(torch.equal(after[k], start[k]) for k in start)
    assert json.loads((grown / "policy" / "config.json").read_text())["lateral_head"] is True
    with pytest.raises(SystemExit, match=r"not the model these flags describe .*'lateral_head': \(True, False\)"):
        main([*argv, "--data", data, "--out", str(tmp_path / "bad"), "--init", str(grown)])
    # the light head and its colour as an input: the input starts at zero, so the grown policy decides as before
    lit = tmp_path / "lit"
    flags = ["--lateral-head", "--light-head", "--light-input", "--lr", "0"]
    assert main([*argv, "--data", data, "--out", str(lit), "--init", str(grown), *flags]) == 0
    assert "['light_head', 'light_input'] switched on" in capsys.readouterr().out
    lit_weights = load_file(lit / "policy" / "model.safetensors")
    assert {k.split(".")[0] for k in lit_weights.keys() - after.keys()} == {"light", "light_state"}
    assert not lit_weights["light_state.weight"].any() and not lit_weights["light_state.bias"].any()
    # what the lateral head learns may change while it trains (from the checkpoint's weights), not otherwise
    arc_flags = ["--init", str(grown), "--lateral-head", "--lateral-target", "arc"]
    arc = tmp_path / "arc"
    assert main([*argv, "--data", data, "--out", str(arc), *arc_flags, "--train-only", "lateral"]) == 0
    assert "['lateral_target'] changed, 2 new tensors" in capsys.readouterr().out  # the head's last layer: 4 columns
    assert json.loads((arc / "policy" / "config.json").read_text())["lateral_target"] == "arc"
    light_only = ["--light-head", "--train-only", "light"]
    with pytest.raises(SystemExit, match=r"not the model these flags describe .*'lateral_target': \('time', 'arc'\)"):
        main([*argv, "--data", data, "--out", str(tmp_path / "bad2"), *arc_flags, *light_only])


@pytest.mark.parametrize("field", ["speed_limit_input", "stop_line_input", "plan_residual"])
def test_train_with_a_flag_the_weights_depend_on(split_data_dir, tmp_path, field: str):
    data, run, flag = str(split_data_dir), tmp_path / "map", field.replace("_", "-")
    argv = ["train", "--config", "tiny", "--batch-size", "4", "--max-steps", "2", "--open-loop-samples", "0"]
    assert main([*argv, "--data", data, "--out", str(run), f"--{flag}"]) == 0
    assert json.loads((run / "policy" / "config.json").read_text())[field] is True
    # the weights depend on it (the state token's inputs, the plan's units): a fine-tune cannot switch it off (or on)
    with pytest.raises(SystemExit, match=rf"not the model these flags describe .*'{field}': \(True, False\)"):
        main([*argv, "--data", data, "--out", str(tmp_path / "bad"), "--init", str(run), f"--no-{flag}"])


def test_train_at_another_image_size_keeps_the_token_grid_with_bigger_patches(split_data_dir, tmp_path):
    from worlddrive.models import WorldDrivePolicy

    data, run = str(split_data_dir), tmp_path / "hires"
    argv = ["train", "--config", "tiny", "--batch-size", "4", "--max-steps", "1", "--open-loop-samples", "0"]
    assert main([*argv, "--data", data, "--out", str(run), "--image-size", "64x128", "--patch-size", "16"]) == 0
    config = WorldDrivePolicy.from_pretrained(run / "policy").config
    assert config.image_size == (64, 128) and config.grid == PolicyConfig.preset("tiny").grid == (4, 8)
    with pytest.raises(SystemExit, match="--image-size must look like AxB"):
        main([*argv, "--data", data, "--out", str(tmp_path / "bad"), "--image-size", "64by128"])
    with pytest.raises(SystemExit, match=r"image_size.*divisible by patch_size=16"):
        main([*argv, "--data", data, "--out", str(tmp_path / "bad"), "--image-size", "72x128", "--patch-size", "16"])


def test_train_only_lateral_moves_the_head_and_nothing_else(split_data_dir, tmp_path):
    from safetensors.torch import load_file

    data, base, head = str(split_data_dir), tmp_path / "base", tmp_path / "head"
    argv = ["train", "--config", "tiny", "--batch-size", "4", "--max-steps", "2", "--open-loop-samples", "0"]
    argv += ["--data", data, "--wm", "frame"]
    assert main([*argv, "--out", str(base)]) == 0
    only = [*argv, "--init", str(base), "--lateral-head", "--train-only", "lateral"]
    assert main([*only, "--out", str(head)]) == 0
    start, after = (load_file(run / "policy" / "model.safetensors") for run in (base, head))
    assert all(torch.equal(after[k], start[k]) for k in start)  # the frozen policy, world model included
    still = tmp_path / "still"  # the same head at lr 0: its weights as drawn
    assert main([*only, "--out", str(still), "--lr", "0"]) == 0
    drawn = load_file(still / "policy" / "model.safetensors")
    assert not torch.equal(after["lateral.mlp.2.weight"], drawn["lateral.mlp.2.weight"])
    assert json.loads((head / "train_config.json").read_text())["train_only"] == ["lateral"]
    with pytest.raises(SystemExit, match="add --lateral-head"):
        main([*argv, "--out", str(tmp_path / "bad"), "--init", str(base), "--train-only", "lateral"])
    with pytest.raises(SystemExit, match="add --light-head"):
        main([*argv, "--out", str(tmp_path / "bad"), "--init", str(base), "--train-only", "light"])
    with pytest.raises(SystemExit, match="give --init CKPT"):
        main([*argv, "--out", str(tmp_path / "bad"), "--lateral-head", "--train-only", "lateral"])


def test_the_same_seed_trains_the_same_world_model(split_data_dir, tmp_path):
    # torch seeds itself randomly per process: the initial weights must come from --seed, not from that
    from safetensors.torch import load_file

    argv = ["train", "--config", "tiny", "--batch-size", "4", "--max-steps", "1", "--open-loop-samples", "0"]
    argv += ["--data", str(split_data_dir), "--wm", "bev"]
    torch.manual_seed(1)
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    torch.manual_seed(2)  # what a fresh process would differ in
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    a, b = (load_file(tmp_path / run / "policy" / "model.safetensors") for run in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_world_model_training_with_a_trained_tokenizer(split_data_dir, tmp_path, capsys):
    vq = tmp_path / "vq"
    argv = ["train-tokenizer", "--data", str(split_data_dir), "--out", str(vq), "--steps", "3", "--batch-size", "4"]
    assert main(argv) == 0
    assert float(result_line(capsys.readouterr().out)["psnr"]) > 0
    argv = [
        "train",
        "--config",
        "tiny",
        "--data",
        str(split_data_dir),
        "--out",
        str(tmp_path / "run"),
        "--batch-size",
        "4",
        "--max-steps",
        "2",
        "--wm",
        "vq,frame,bev",
    ]
    with pytest.raises(SystemExit, match="--wm vq needs --vq"):
        main(argv)
    assert main([*argv, "--vq", str(vq)]) == 0
    assert result_line(capsys.readouterr().out)["steps"] == "2"
    from worlddrive.models import WorldDrivePolicy

    policy = WorldDrivePolicy.from_pretrained(tmp_path / "run" / "policy")  # carries its VQ tokenizer
    assert policy.world_model.tokenizer is not None
    shutil.rmtree(tmp_path / "run" / "policy" / "vq")
    with pytest.raises(FileNotFoundError, match="has a vq head but no vq/"):
        WorldDrivePolicy.from_pretrained(tmp_path / "run" / "policy")


def test_data_weights_repeat_a_training_set_and_not_its_val_split(split_data_dir, tmp_path):
    from worlddrive.cli import _union
    from worlddrive.data.dataset import WorldDriveDataset, data_roots

    data = str(split_data_dir)
    assert data_roots(f"{data}, {data}*3") == [(data, 1), (data, 3)]
    fields = WorldDriveDataset.fields_for(())
    once, weighed = data_roots(data), data_roots(f"{data}*3")
    assert len(_union(weighed, "train", fields, 1.0, 0)) == 3 * len(_union(once, "train", fields, 1.0, 0)) > 0
    assert len(_union(weighed, "val", fields, 1.0, 0)) == len(_union(once, "val", fields, 1.0, 0)) > 0
    for bad in (f"{data}*0", f"{data}*x", "*2", ","):
        with pytest.raises(ValueError, match="--data"):
            data_roots(bad)
        with pytest.raises(SystemExit, match="error: --data"):  # as `train` reports it
            main(["train", "--data", bad, "--out", str(tmp_path / "bad"), "--config", "tiny"])


def test_probe_prints_the_plans_and_writes_them(tmp_path, capsys):
    rows = tmp_path / "probe.csv"
    argv = ["probe", "--policy", "builtin", "--family", "straight", "--seed", "0", "--every", "2", "--out", str(rows)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    res = result_line(out)
    assert "the expert's from the same state" in out and 0.0 <= float(res["ds"]) <= 1.0
    assert int(res["replans"]) == len(rows.read_text().splitlines()) - 1 > 5
