"""`bench train` on the tiny preset with no time budget: the keys, their relations and the FLOP count it rests on."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch.utils.flop_counter import FlopCounterMode

from worlddrive.cli import main
from worlddrive.models import PolicyConfig
from worlddrive.models.bench import CPU_ATTENTION_FLOPS, bench_train, count_step_flops, synthetic_policy

pytestmark = pytest.mark.usefixtures("one_thread")

KEYS = ("samples_per_s", "step_s", "gflop_per_sample", "gflops_per_s", "rss_mb", "peak_gflops", "mfu")


def check(res: dict[str, float], prefix: str = "") -> None:
    for key in KEYS:
        assert res[prefix + key] > 0, prefix + key
    assert res[prefix + "mfu"] == pytest.approx(res[prefix + "gflops_per_s"] / res[prefix + "peak_gflops"])
    achieved = res[prefix + "gflop_per_sample"] * res[prefix + "samples_per_s"]
    assert res[prefix + "gflops_per_s"] == pytest.approx(achieved)


def test_bench_train_fp32_and_bf16() -> None:
    res = bench_train("tiny", batch_size=2, seconds=0.0, wm_heads=("frame", "bev"), bf16=True)
    check(res)
    check(res, "bf16_")
    assert res["threads"] == 1 and res["batch_size"] == 2 and res["model_only"] == 1
    assert res["bf16_speedup"] == pytest.approx(res["bf16_samples_per_s"] / res["samples_per_s"])


def test_bench_train_reads_a_dataset(dataset_dir: Path) -> None:
    res = bench_train("tiny", batch_size=4, seconds=0.0, data=dataset_dir)
    check(res)
    assert res["model_only"] == 0 and 0 < res["data_frac"] < 1
    assert "bf16_mfu" not in res


def test_step_flops_are_per_sample_about_three_forwards_and_count_attention() -> None:
    policy = synthetic_policy(PolicyConfig.preset("tiny", wm_heads=("frame", "bev"))).train()
    one = count_step_flops(policy, policy.example_batch(1))
    assert count_step_flops(policy, policy.example_batch(3)) == 3 * one
    with FlopCounterMode(display=False) as counter:  # torch's own table knows no CPU attention kernel
        policy(policy.example_batch(1))[0].backward()
    assert one > counter.get_total_flops()
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        policy(policy.example_batch(1))
    forward = counter.get_total_flops()
    assert 2.9 * forward < one <= 3 * forward  # the first conv needs no input gradient


def test_cli_prints_result_last(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "train", "--config", "tiny", "--batch-size", "2", "--seconds", "0", "--bf16"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("RESULT ") and " mfu=" in last and " bf16_mfu=" in last


def test_vq_head_is_refused() -> None:
    with pytest.raises(ValueError, match="vq"):
        bench_train("tiny", seconds=0.0, wm_heads=("vq",))
