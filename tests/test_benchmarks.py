from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_policy_times_every_policy_on_the_same_observations() -> None:
    policies = "builtin,builtin+builtin@path"
    out = subprocess.run(
        [sys.executable, "benchmarks/bench_policy.py", "--policy", policies, "--steps", "14", "--threads=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    results = [dict(kv.split("=") for kv in line.split()[1:]) for line in out.splitlines() if line.startswith("RESULT")]
    assert len(results) == 2 and out.splitlines()[-1].startswith("RESULT")
    assert [r["policy"] for r in results] == ["builtin", "builtin+builtin@path"]  # an ensemble: both members decide
    for r in results:
        assert r["decisions"] == "4"  # 14 steps less the 10 warm-up decisions
        assert 0 < float(r["p50_ms"]) <= float(r["p95_ms"]) <= float(r["max_ms"])
        assert 0 <= int(r["missed_ticks"]) <= 4
