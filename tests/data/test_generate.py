"""Generation is deterministic, resumable after any crash (even SIGKILL), refuses bad input early, and scales out."""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import fake_record_episode, make_dataset

from worlddrive.data.format import load_info, read_shard, validate
from worlddrive.data.generate import generate, plan
from worlddrive.eval.drivers import BUILTIN
from worlddrive.sim.camera import BevConfig, CameraConfig

TESTS_DIR = Path(__file__).parent


def _explode(family, seed, camera=None, bev=None):
    raise AssertionError(f"no episode should be recorded, got ({family}, {seed})")


def _fail_on_crosswalk_1(family, seed, camera=None, bev=None):
    if (family, seed) == ("crosswalk", 1):
        raise RuntimeError("simulated crash")
    return fake_record_episode(family, seed)


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def test_plan_is_family_major_and_cut_into_shards():
    assert plan(["a", "b"], 3, 10, 2) == [(("a", 10), ("a", 11)), (("a", 12), ("b", 10)), (("b", 11), ("b", 12))]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"families": ["straight", "no_such_family"]}, "unknown scenario families \\['no_such_family'\\]"),
        ({"families": []}, "no scenario families"),
        ({"episodes": 0}, "episodes must be a positive integer, got 0"),
        ({"episodes": -1}, "episodes must be a positive integer, got -1"),
        ({"workers": 0}, "workers must be a positive integer"),
        ({"episodes_per_shard": 0}, "episodes_per_shard must be a positive integer"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    args = {
        "families": ["straight"],
        "episodes": 2,
        "seed": 0,
        "out": tmp_path / "out",
        "progress": False,
        "record_fn": _explode,
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        generate(**args)
    assert not (tmp_path / "out").exists()  # checked before touching the disk


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    for out in (blocker, blocker / "sub"):
        with pytest.raises(PermissionError, match=f"output folder {out} is not writable"):
            generate(["straight"], 1, 0, out, progress=False, record_fn=_explode)
    assert blocker.read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_output(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            generate(["straight"], 1, 0, tmp_path / "out", progress=False, record_fn=_explode)
    finally:
        tmp_path.chmod(0o700)


def test_rerun_of_finished_job_changes_nothing(tmp_path):
    info = make_dataset(tmp_path)
    before = _snapshot(tmp_path)
    again = generate(
        ["straight", "crosswalk"], 3, 0, tmp_path, episodes_per_shard=2, progress=False, record_fn=_explode
    )
    assert again == info
    assert _snapshot(tmp_path) == before


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path):
    reference = make_dataset(tmp_path / "ref")
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated crash"):
        make_dataset(out, record_fn=_fail_on_crosswalk_1)
    # shard 2 = (crosswalk 1, crosswalk 2) failed; shards 0 and 1 are finished and kept
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard_00000.zarr", "shard_00001.zarr"]
    assert not (out / "info.json").exists()
    kept = _snapshot(out / "shards")
    assert make_dataset(out) == reference
    after = _snapshot(out / "shards")
    assert {k: after[k] for k in kept} == kept
    assert validate(out) == []


def test_leftover_partial_is_redone(tmp_path):
    reference = make_dataset(tmp_path / "ref")
    out = tmp_path / "out"
    make_dataset(out)
    shard = out / "shards/shard_00001.zarr"
    os.rename(shard, shard.with_name(shard.name + ".partial"))
    (out / "info.json").unlink()
    assert make_dataset(out) == reference
    assert validate(out) == []
    assert not list((out / "shards").glob("*.partial"))


def test_shard_from_another_plan_is_an_error(tmp_path):
    make_dataset(tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"shard_00000\.zarr holds episodes .* plans episodes \[\['straight', 5\]"):
        generate(["straight", "crosswalk"], 3, 5, tmp_path, episodes_per_shard=2, progress=False, record_fn=_explode)
    with pytest.raises(ValueError, match=r"shard_00000\.zarr holds .* other recording settings"):
        make_dataset(tmp_path, camera=CameraConfig(width=64), record_fn=_explode)
    with pytest.raises(ValueError, match=r"other recording settings .*'perturb': 0\.5"):
        make_dataset(tmp_path, perturb=0.5, record_fn=_explode)
    assert _snapshot(tmp_path) == before


def test_perturb_is_recorded_and_checked(tmp_path):
    info = make_dataset(tmp_path, perturb=0.25)
    assert info["generator"]["perturb"] == 0.25
    assert make_dataset(tmp_path, perturb=0.25, record_fn=_explode) == info  # a rerun with the same settings
    with pytest.raises(ValueError, match="perturb must be a probability"):
        make_dataset(tmp_path / "bad", perturb=1.5)


def test_takeover_policy_and_its_weights_are_recorded_and_checked(tmp_path):
    policy = tmp_path / "policy"
    shutil.copytree(BUILTIN, policy)
    out = tmp_path / "data"
    info = make_dataset(out, perturb=1.0, takeover=str(policy))
    digest = hashlib.sha256((policy / "model.safetensors").read_bytes()).hexdigest()
    assert info["generator"]["takeover"] == {"policy": str(policy), "weights_sha256": digest}
    assert make_dataset(out, perturb=1.0, takeover=str(policy), record_fn=_explode) == info
    with (policy / "model.safetensors").open("ab") as f:  # other weights under the same path
        f.write(b"0")
    with pytest.raises(ValueError, match="other recording settings"):
        make_dataset(out, perturb=1.0, takeover=str(policy), record_fn=_explode)
    with pytest.raises(ValueError, match="perturb > 0"):
        make_dataset(tmp_path / "none", takeover="builtin")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        make_dataset(tmp_path / "missing", perturb=1.0, takeover=str(tmp_path / "nowhere"))
    rule_based = make_dataset(tmp_path / "idm", perturb=1.0, takeover="idm")
    assert rule_based["generator"]["takeover"] == {"policy": "idm"}


def test_takeover_burst_lengths_are_recorded_and_checked(tmp_path):
    info = make_dataset(tmp_path / "long", perturb=1.0, takeover="idm", takeover_seconds=(3.0, 8.0))
    assert info["generator"]["takeover"] == {"policy": "idm", "seconds": [3.0, 8.0]}
    with pytest.raises(ValueError, match="other recording settings"):  # a resume with other lengths
        make_dataset(tmp_path / "long", perturb=1.0, takeover="idm", record_fn=_explode)
    with pytest.raises(ValueError, match="give a takeover policy too"):
        make_dataset(tmp_path / "noise", perturb=1.0, takeover_seconds=(3.0, 8.0))
    with pytest.raises(ValueError, match="0 < A <= B"):
        make_dataset(tmp_path / "bad", perturb=1.0, takeover="idm", takeover_seconds=(5.0, 2.0))


def test_family_overrides_are_recorded_passed_on_and_checked(tmp_path):
    info = make_dataset(tmp_path / "fast", family_config={"ego_speed": [1, 16]})
    assert info["generator"]["family_config"] == {"ego_speed": [1, 16]}
    with pytest.raises(ValueError, match="other recording settings"):  # a resume without them
        make_dataset(tmp_path / "fast", record_fn=_explode)
    with pytest.raises(KeyError, match="unknown config keys for family 'straight': \\['ego_sped'\\]"):
        make_dataset(tmp_path / "typo", family_config={"ego_sped": [1, 16]})
    seen = []
    generate(["straight"], 1, 5, tmp_path / "seen", progress=False, record_fn=_Spy(seen), family_config={"walkers": 0})
    assert seen == [{"walkers": 0}]


class _Spy:
    """A record_fn that notes the family config it is given (in this process: workers=1)."""

    def __init__(self, seen: list):
        self.seen = seen

    def __call__(self, family, seed, family_config=None, **kwargs):
        self.seen.append(family_config)
        return fake_record_episode(family, seed, **kwargs)


def test_more_episodes_extend_a_single_family_run(tmp_path):
    make_dataset(tmp_path, families=("straight",), episodes=4)
    kept = _snapshot(tmp_path / "shards")
    info = make_dataset(tmp_path, families=("straight",), episodes=6)
    assert info["seeds"] == {"straight": list(range(6))}
    after = _snapshot(tmp_path / "shards")
    assert {k: after[k] for k in kept} == kept and len(after) > len(kept)
    assert validate(tmp_path) == []
    with pytest.raises(ValueError, match=r"shard_00002\.zarr holds episodes .* this run plans no such shard"):
        make_dataset(tmp_path, families=("straight",), episodes=4, record_fn=_explode)  # a smaller plan


DRIVER = """
import sys
import time
sys.path.insert(0, {tests!r})
from conftest import fake_record_episode
from worlddrive.data.generate import generate


def slow_record(family, seed, camera=None, bev=None):
    time.sleep({delay})
    return fake_record_episode(family, seed)


if __name__ == "__main__":
    generate(["straight"], 8, 0, {out!r}, workers=2, episodes_per_shard=1, progress=False, record_fn=slow_record)
"""


def _driver(tmp_path: Path, out: Path, delay: float) -> Path:
    script = tmp_path / f"driver_{delay}.py"
    script.write_text(DRIVER.format(tests=str(TESTS_DIR), out=str(out), delay=delay))
    return script


def test_resume_after_sigkill(tmp_path):
    """kill -9 mid-run (2 spawned workers), rerun the same command: same files as an uninterrupted run."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, _driver(tmp_path, out, delay=0.4)])
    first = out / "shards/shard_00000.zarr"
    deadline = time.monotonic() + 60
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert first.exists(), "the first shard never appeared"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = sorted(p.name for p in (out / "shards").iterdir())
    time.sleep(1.0)  # longer than an episode: an orphaned worker would have finished a shard by now
    assert sorted(p.name for p in (out / "shards").iterdir()) == killed, "workers outlived their parent"
    assert len([n for n in killed if n.endswith(".zarr")]) < 8 and not (out / "info.json").exists()

    subprocess.run([sys.executable, _driver(tmp_path, out, delay=0.0)], check=True, timeout=120)
    reference = generate(
        ["straight"], 8, 0, tmp_path / "ref", episodes_per_shard=1, progress=False, record_fn=fake_record_episode
    )
    assert validate(out) == []
    assert load_info(out) == reference
    assert sorted(p.name for p in (out / "shards").iterdir()) == [f"shard_{i:05d}.zarr" for i in range(8)]


def test_ray_local_cluster(tmp_path):
    ray = pytest.importorskip("ray")
    # Ray workers find the fake recorder through PYTHONPATH, as cluster nodes would find an installed package.
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": str(TESTS_DIR)}})
    try:
        info = make_dataset(tmp_path / "ray", ray_address="local")
    finally:
        ray.shutdown()
    assert info == make_dataset(tmp_path / "local")
    assert validate(tmp_path / "ray") == []


@pytest.mark.slow
def test_real_simulation_end_to_end(tmp_path):
    """The real recorder in 2 spawned workers: shards validate and hold the episodes it recorded."""
    camera, bev = CameraConfig(width=64, height=32), BevConfig(width=32, height=32)
    info = generate(
        ["straight"], 2, 0, tmp_path, workers=2, episodes_per_shard=1, progress=False, camera=camera, bev=bev
    )
    assert validate(tmp_path) == []
    assert info["camera_shape"] == [32, 64, 3] and info["bev_shape"][1:] == [32, 32]
    assert info["generator"]["camera"]["width"] == 64
    record = read_shard(tmp_path / "shards/shard_00001.zarr")[0]
    assert (record.family, record.seed) == ("straight", 1) and record.num_samples > 0
