"""The training loop: schedule, learning, exact resume after kill -9, bad batches skipped, DDP = one process."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from worlddrive.train import STATE_DIR, TrainConfig, evaluate, lr_at, train

sys.path.insert(0, str(Path(__file__).parent))
from toy_training import Toy, collate, config, toy_data

TOY = Path(__file__).parent / "toy_training.py"


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(max_steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(55, cfg) < lr_at(20, cfg) < 1e-3
    assert lr_at(100, cfg) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="max_steps must be positive"):
        TrainConfig(max_steps=0)


def test_validation_loss_falls_and_state_is_written(tmp_path):
    cfg = config(80)
    before = evaluate(Toy(), toy_data(64, seed=1), collate, cfg, torch.device("cpu"))["loss"]
    res = train(Toy(), toy_data(), toy_data(64, seed=1), collate, tmp_path, cfg, progress=False)
    assert res["val_loss"] < 0.5 * before
    again = train(Toy(), toy_data(), toy_data(64, seed=1), collate, tmp_path, cfg, progress=False)  # finished: no work
    assert again["step"] == res["step"] and again["samples_per_s"] == pytest.approx(res["samples_per_s"], rel=0.5)
    assert (tmp_path / STATE_DIR / "model.safetensors").exists() and (tmp_path / "tensorboard").exists()
    assert not list(tmp_path.glob("*.partial"))


def _run(out: Path, steps: int, *hold_at: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), str(TOY.parent)])}
    argv = [sys.executable, str(TOY), str(out), str(steps), *map(str, hold_at)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)


def test_train_only_updates_the_named_part_and_nothing_else(tmp_path):
    model = Toy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, toy_data(), None, collate, tmp_path / "a", config(20, train_only=("net.3",)), progress=False)
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in ("net.0.weight", "net.0.bias"))
    assert not torch.equal(after["net.3.weight"], before["net.3.weight"])
    with pytest.raises(ValueError, match=r"\['nope'\] are not submodules with parameters; the model's parts: \['net'"):
        train(Toy(), toy_data(), None, collate, tmp_path / "b", config(2, train_only=("nope",)), progress=False)


def test_kill_and_rerun_reaches_the_same_final_loss(tmp_path):
    steps = 60
    full = _run(tmp_path / "full", steps)
    reference = float(full.communicate(timeout=120)[0].split("FINAL")[-1])
    run = _run(tmp_path / "killed", steps, 25)  # it sleeps once its step-25 save is written
    deadline = time.time() + 60
    while time.time() < deadline and not (tmp_path / "killed" / "held").exists():
        time.sleep(0.01)
    os.kill(run.pid, signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL  # it really died mid-run
    assert json.loads((tmp_path / "killed" / STATE_DIR / "state.json").read_text())["step"] == 25
    resumed = _run(tmp_path / "killed", steps)
    final = float(resumed.communicate(timeout=120)[0].split("FINAL")[-1])
    assert final == pytest.approx(reference, abs=1e-6)
    again = _run(tmp_path / "killed", steps)  # a finished run started again does no work and reports the same
    assert float(again.communicate(timeout=120)[0].split("FINAL")[-1]) == final


def test_bad_batches_are_skipped_without_touching_the_weights(tmp_path):
    data = toy_data(nan_at=3)
    with pytest.warns(UserWarning, match="skipped a bad batch: batch field 'x'"):
        res = train(Toy(), data, None, collate, tmp_path, config(20), progress=False)
    assert res["skipped"] >= 1
    weights = load_file(tmp_path / STATE_DIR / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def _ddp_toy() -> Toy:
    model = Toy()
    model.net[2].p = 0.0  # no dropout: the two runs must see identical computations
    model.idle = torch.nn.Linear(4, 4)  # gets no gradient, like the policy's reasoning slot when lambda_lang = 0
    return model


def _ddp_worker(rank: int, world: int, out: str, port: int) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    train(_ddp_toy(), toy_data(), None, collate, Path(out), config(3), progress=False)
    assert not torch.distributed.is_initialized()  # train() started the group, so it also ends it


def test_two_process_ddp_matches_one_process(tmp_path):
    train(_ddp_toy(), toy_data(), None, collate, tmp_path / "one", config(3), progress=False)
    with socket.socket() as sock:  # a free port for the gloo rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "two"), port), nprocs=2, start_method="spawn")
    one = load_file(tmp_path / "one" / STATE_DIR / "model.safetensors")
    two = load_file(tmp_path / "two" / STATE_DIR / "model.safetensors")
    for k in one:
        torch.testing.assert_close(one[k], two[k], atol=1e-6, rtol=1e-5)
