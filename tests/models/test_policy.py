from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from worlddrive.models import PolicyConfig, WorldDrivePolicy
from worlddrive.models.policy import CHECKPOINT_FILES, CONFIG_FILE, MODEL_FILE
from worlddrive.sim.state import EGO_ACCEL, EGO_SPEED, EGO_STEER, STOP_CONTROL, STOP_HORIZON

pytestmark = pytest.mark.usefixtures("one_thread")


def test_forward_logs_every_term(make_policy, items: list) -> None:
    policy = make_policy()
    loss, logs = policy(policy.collate(items))
    assert set(logs) == {"loss", "action_loss", "wm_loss", "lang_loss"}
    assert logs["wm_loss"] == 0.0 and logs["lang_loss"] > 0
    assert logs["loss"] == pytest.approx(logs["action_loss"] + policy.config.lambda_lang * logs["lang_loss"], rel=1e-5)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in policy.parameters() if p.grad is not None)


def test_shapes(make_policy, items: list) -> None:
    policy = make_policy()
    batch = policy.collate(items[:2])
    hidden, layout = policy.encode(batch, reasoning=True)
    assert hidden.shape == (2, len(layout), policy.config.d_model)
    h, w = policy.config.grid
    assert policy.visual_grid(hidden).shape == (2, h, w, policy.config.d_model)
    assert policy.predict_trajectory(batch, num_samples=3).shape == (2, 3, 8, 3)


def test_a_residual_plan_is_learned_against_driving_on(make_policy, overfit, items: list) -> None:
    policy = make_policy(plan_residual=True)
    batch = policy.collate(items)
    speed = batch["ego"][:, EGO_SPEED]  # (B,)
    driving_on = torch.zeros_like(batch["trajectory"])
    driving_on[..., 0] = speed[:, None] * 0.5 * torch.arange(1, 9)
    # driving on at any speed is one and the same target: the residual's mean, -mean / std in its units
    torch.testing.assert_close(
        policy.normalise(driving_on, speed),
        (-policy.trajectory_mean / policy.trajectory_std).expand(len(speed), -1, -1),
    )
    torch.testing.assert_close(
        policy.denormalise(policy.normalise(batch["trajectory"], speed), speed), batch["trajectory"]
    )
    losses = overfit(policy, batch, 60)
    assert losses[-1] < 0.5 * losses[0]


def test_a_residual_plan_needs_the_datasets_residual_stats(tokenizer, dataset) -> None:
    stats = {k: v for k, v in dataset.stats.items() if k != "trajectory_residual"}
    with pytest.raises(ValueError, match=r"trajectory_residual stats .* generate the first --data folder again"):
        WorldDrivePolicy(PolicyConfig.preset("tiny", plan_residual=True), tokenizer, stats)


@pytest.mark.parametrize("field", ["trajectory", "ego", "past_trajectory"])
def test_non_finite_input_raises_naming_the_field(make_policy, items: list, field: str) -> None:
    policy = make_policy()
    batch = policy.collate(items[:2])
    batch[field][1].view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match=f"'{field}'"):
        policy(batch)


@pytest.mark.parametrize(("expert", "ratio"), [("query", 0.5), ("flow", 0.75), ("ar", 0.5)])
def test_every_expert_overfits_eight_samples(make_policy, overfit, items: list, expert: str, ratio: float) -> None:
    policy = make_policy(action_expert=expert, lambda_lang=0.0)
    batch = policy.collate(items)
    losses = overfit(policy, batch, 60)
    assert np.mean(losses[-10:]) < ratio * np.mean(losses[:5]), losses


def test_language_loss_decreases(make_policy, overfit, items: list) -> None:
    policy = make_policy(lambda_lang=1.0)
    batch = policy.collate(items[:4])
    losses = overfit(policy, batch, 30, log="lang_loss")
    assert losses[-1] < 0.5 * losses[0]


def test_cached_generation_equals_uncached_greedy(make_policy, items: list) -> None:
    policy = make_policy().eval()
    batch = policy.collate(items[:3])
    cached = policy.generate_tokens(batch, max_tokens=12)
    assert cached.shape == (3, 12)
    assert torch.equal(cached, policy.generate_tokens(batch, max_tokens=12, use_cache=False))
    texts = policy.generate_reasoning(batch, max_tokens=12)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)


def test_save_load_round_trip(make_policy, items: list, tmp_path: Path) -> None:
    policy = make_policy(action_expert="flow").eval()
    batch = policy.collate(items[:2])
    policy.save_pretrained(tmp_path / "ckpt")
    policy.save_pretrained(tmp_path / "ckpt")  # replacing an existing checkpoint
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == sorted(CHECKPOINT_FILES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary folders left
    loaded = WorldDrivePolicy.from_pretrained(tmp_path / "ckpt")
    assert not loaded.training and loaded.config == policy.config and loaded.stats == policy.stats

    def outputs(p: WorldDrivePolicy) -> torch.Tensor:
        return p.predict_trajectory(batch, num_samples=2, generator=torch.Generator().manual_seed(0))

    assert torch.equal(outputs(policy), outputs(loaded))
    assert torch.equal(policy.generate_tokens(batch, 5), loaded.generate_tokens(batch, 5))


@pytest.fixture
def checkpoint(make_policy, tmp_path: Path) -> Path:
    return make_policy().save_pretrained(tmp_path / "ckpt")


@pytest.mark.parametrize("name", CHECKPOINT_FILES)
def test_missing_file_is_named(checkpoint: Path, name: str) -> None:
    (checkpoint / name).unlink()
    with pytest.raises(FileNotFoundError, match=name):
        WorldDrivePolicy.from_pretrained(checkpoint)


def test_changed_config_names_the_mismatched_tensors(checkpoint: Path) -> None:
    config = json.loads((checkpoint / CONFIG_FILE).read_text())
    config["n_layers"] += 1
    config["d_model"] = 96
    (checkpoint / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"missing tensors \['backbone\.blocks\.2\..*shape mismatches.*action_queries"):
        WorldDrivePolicy.from_pretrained(checkpoint)


def test_unknown_config_key_is_named(checkpoint: Path) -> None:
    config = json.loads((checkpoint / CONFIG_FILE).read_text())
    config["use_magic"] = True
    (checkpoint / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="use_magic"):
        WorldDrivePolicy.from_pretrained(checkpoint)


def test_a_checkpoint_older_than_the_backbone_options_loads(checkpoint: Path) -> None:
    config = json.loads((checkpoint / CONFIG_FILE).read_text())
    del config["backbone"], config["instruction_encoder"]
    (checkpoint / CONFIG_FILE).write_text(json.dumps(config))
    loaded = WorldDrivePolicy.from_pretrained(checkpoint)
    assert (loaded.config.backbone, loaded.config.instruction_encoder) == ("native", "bpe")


def test_missing_and_extra_tensors_are_named(checkpoint: Path) -> None:
    tensors = load_file(checkpoint / MODEL_FILE)
    del tensors["lm_head.weight"]
    tensors["extra.weight"] = torch.zeros(2)
    save_file(tensors, checkpoint / MODEL_FILE)
    expected = r"missing tensors \['lm_head.weight'\], unexpected tensors \['extra.weight'\]"
    with pytest.raises(ValueError, match=expected):
        WorldDrivePolicy.from_pretrained(checkpoint)


def test_select_action_on_a_real_env_observation(make_policy) -> None:
    from worlddrive.sim.env import DriveEnv

    policy = make_policy(action_expert="flow").eval()
    env = DriveEnv({"family": "crosswalk"})
    try:
        obs, _ = env.reset(seed=0)
        policy.reset()
        first = policy.select_action(obs)
        for _ in range(6):  # long enough for a real past frame (KEY_EVERY steps back)
            action = policy.select_action(obs)
            assert action.shape == (8, 3) and action.dtype == np.float32 and np.isfinite(action).all()
            obs, *_ = env.step(action)
        out = policy.predict(obs, num_samples=4, reason=True)
        assert out["samples"].shape == (4, 8, 3) and isinstance(out["reasoning"], str)
        policy.reset()
        env_obs, _ = env.reset(seed=0)
        assert np.array_equal(policy.select_action(env_obs), first)  # reset() forgets the history
    finally:
        env.close()


def test_the_closed_loops_first_second_is_what_the_dataset_shows(make_policy) -> None:
    # the policy's past at an episode's start (padded frames and poses) must be the one its first samples were
    # trained with, or a policy meets a kind of input in its first second that no sample had
    from worlddrive.data.record import KEY_EVERY, PAST, record_episode
    from worlddrive.sim.camera import FrontCamera
    from worlddrive.sim.env import Observer
    from worlddrive.sim.expert import Expert
    from worlddrive.sim.scenarios import make_family
    from worlddrive.sim.world import World

    record = record_episode("straight", 1)
    assert record.key_index[0] == PAST  # the first keyframe is a sample
    policy = make_policy(past_frames=PAST).eval()
    world = World(make_family("straight").make(1))
    expert, observer, state = Expert(world), Observer(world, FrontCamera(), None, 1), world.reset()
    policy.reset()
    for step in range(PAST * KEY_EVERY + 1):
        policy.observe(observer(state))
        if step % KEY_EVERY == 0:
            key, batch = step // KEY_EVERY, policy.history_batch()
            frames = torch.from_numpy(record.frames[key : key + PAST + 1]).permute(0, 3, 1, 2)  # rows: keyframe + PAST
            assert torch.equal(batch["camera"][0], frames), f"keyframe {key}"
            torch.testing.assert_close(batch["past_trajectory"][0], torch.from_numpy(record.past_trajectory[key]))
            # the frames embedded once and kept give what embedding the batch's camera afresh gives
            fresh = {k: v for k, v in batch.items() if k != "camera_embedded"}
            torch.testing.assert_close(policy.predict_trajectory(batch), policy.predict_trajectory(fresh))
        out = expert.act(state, plan=False)
        state = world.step(out.accel, out.steer)


def test_optimizer_groups(make_policy) -> None:
    policy = make_policy()
    decay, no_decay = policy.configure_optimizers(weight_decay=0.1, lr=1e-3).param_groups
    names = {id(p): n for n, p in policy.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert "backbone.blocks.0.mlp.0.weight" in decayed and "vision.stem.0.weight" in decayed
    assert not any(k in n for n in decayed for k in ("ln_", "bias", "embedding", "_pos", "queries", "command"))
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(policy.parameters()))


class FakeWorldModel(torch.nn.Module):
    def __init__(self, d_model: int, heads: tuple[str, ...], occ_pos_weight: float = 1.0) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.grids: list[torch.Size] = []

    def loss(self, grid: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        self.grids.append(grid.shape)
        return self.scale * grid.pow(2).mean(), {"bev_iou": 0.5}


def test_world_model_hook(make_policy, items: list, monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("worlddrive.models.world_model")
    module.WorldModel = FakeWorldModel
    monkeypatch.setitem(sys.modules, "worlddrive.models.world_model", module)
    policy = make_policy(wm_heads=("bev",), lambda_wm=0.5)
    _, logs = policy(policy.collate(items[:2]))
    h, w = policy.config.grid
    assert policy.world_model.grids == [(2, h, w, policy.config.d_model)]
    assert logs["bev_iou"] == 0.5 and logs["wm_loss"] > 0
    expected = logs["action_loss"] + 0.5 * logs["wm_loss"] + policy.config.lambda_lang * logs["lang_loss"]
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)
    assert "world_model.scale" in policy.state_dict()  # saved with the policy


def test_world_model_import_failure_is_explained(make_policy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "worlddrive.models.world_model", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"wm_heads=\('vq',\) needs worlddrive.models.world_model.WorldModel"):
        make_policy(wm_heads=("vq",))
    assert make_policy().world_model is None  # action-only never imports it


def test_a_given_world_model_is_used_and_reloaded(make_policy, items: list, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="wm_heads is empty"):
        make_policy(world_model=FakeWorldModel(64, ()))
    policy = make_policy(wm_heads=("bev",), world_model=FakeWorldModel(64, ("bev",)))
    with torch.no_grad():
        policy.world_model.scale.fill_(3.0)
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = WorldDrivePolicy.from_pretrained(tmp_path / "ckpt", world_model=FakeWorldModel(64, ("bev",)))
    assert loaded.world_model.scale.item() == 3.0


def test_real_world_model_bev_head_trains_with_the_policy(make_policy, items: list) -> None:
    policy = make_policy(wm_heads=("bev",))
    loss, logs = policy(policy.collate(items[:2]))
    loss.backward()
    assert logs["wm_loss"] > 0 and "bev_occ_bce" in logs
    assert any(k.startswith("world_model.") for k in policy.state_dict())


@pytest.mark.parametrize("history", [False, True])
def test_ego_history_is_seen_only_when_asked(make_policy, items: list, history: bool) -> None:
    policy = make_policy(ego_history=history).eval()
    batch = policy.collate(items[:4])
    moved = {**batch, "past_trajectory": batch["past_trajectory"] + 1.0, "ego": batch["ego"].clone()}
    moved["ego"][:, EGO_STEER:] += 0.1  # steering and yaw rate
    same = torch.allclose(policy.predict_trajectory(batch), policy.predict_trajectory(moved))
    assert same != history


@pytest.mark.parametrize("lateral", [False, True])
@pytest.mark.parametrize("speed", [False, True])
def test_the_ego_speed_is_seen_only_when_asked(make_policy, items: list, speed: bool, lateral: bool) -> None:
    policy = make_policy(speed_input=speed, ego_history=False, lateral_head=lateral).eval()
    batch = policy.collate(items[:4])
    faster = {**batch, "ego": batch["ego"].clone()}
    faster["ego"][:, EGO_SPEED] += 3.0
    faster["ego"][:, EGO_ACCEL] -= 1.0
    same = torch.allclose(policy.predict_trajectory(batch), policy.predict_trajectory(faster))
    assert same != speed
    with pytest.raises(ValueError, match="plan_residual"):
        make_policy(speed_input=False, plan_residual=True)


MAP_INPUTS = {  # flag: the change of each map field it reads
    "speed_limit_input": {"speed_limit": lambda v: v + 5.0},
    "stop_line_input": {"stop_distance": lambda v: v * 0 + 12.0, "stop_control": lambda v: (v + 1) % 4},
}


@pytest.mark.parametrize("lateral", [False, True])
@pytest.mark.parametrize("flag", MAP_INPUTS)
def test_a_map_input_is_read_only_when_asked(make_policy, items: list, flag: str, lateral: bool) -> None:
    batch = make_policy().collate(items[:4])
    for name, change in MAP_INPUTS[flag].items():
        changed = {**batch, name: change(batch[name])}
        for asked in (False, True):
            policy = make_policy(**{flag: asked}, lateral_head=lateral).eval()
            same = torch.allclose(policy.predict_trajectory(batch), policy.predict_trajectory(changed))
            assert same != asked, name
    loss, _ = make_policy(**{flag: True}, lateral_head=lateral)(batch)
    loss.backward()  # trains on dataset batches, which carry the map fields


@pytest.mark.parametrize("flag", MAP_INPUTS)
def test_a_policy_reading_the_map_takes_it_from_the_observation(make_policy, flag: str) -> None:
    from worlddrive.sim.env import DriveEnv

    policy = make_policy(**{flag: True}).eval()
    env = DriveEnv({"family": "intersection_stop", "bev": False})
    try:
        obs, info = env.reset(seed=3)
        state = info["state"]
        assert obs["speed_limit"] == pytest.approx(state.speed_limit) and obs["speed_limit"] > 0
        assert (obs["stop_distance"], obs["stop_control"]) == (pytest.approx(state.stop_distance), STOP_CONTROL)
        assert 0 < obs["stop_distance"] < STOP_HORIZON  # this seed starts 41 m before its stop sign
        policy.reset()
        policy.observe(obs)
        batch = policy.history_batch()
        for name in MAP_INPUTS[flag]:
            assert batch[name].tolist() == [pytest.approx(float(obs[name]))]
            without = {k: v for k, v in obs.items() if k != name}
            with pytest.raises(ValueError, match=name):
                policy.select_action(without)
            make_policy().eval().select_action(without)  # a policy that does not read it does not need it
    finally:
        env.close()


def test_history_dropout_hides_the_history_in_training_only(make_policy, items: list) -> None:
    policy = make_policy(ego_history=True, history_dropout=0.999)
    batch = policy.collate(items[:4])
    moved = {**batch, "past_trajectory": batch["past_trajectory"] + 1.0, "ego": batch["ego"].clone()}
    moved["ego"][:, EGO_STEER:] += 0.1
    torch.manual_seed(0)
    with torch.no_grad():
        assert torch.allclose(policy.train().predict_trajectory(batch), policy.predict_trajectory(moved))
        assert not torch.allclose(policy.eval().predict_trajectory(batch), policy.predict_trajectory(moved))
    with pytest.raises(ValueError, match="history_dropout"):
        make_policy(ego_history=False, history_dropout=0.5)


def test_a_checkpoint_older_than_ego_history_and_mse_loads_as_trained(make_policy, tmp_path: Path) -> None:
    make_policy(ego_history=True, regression_loss="l1").save_pretrained(tmp_path / "old")
    config = json.loads((tmp_path / "old" / CONFIG_FILE).read_text())
    del config["ego_history"], config["regression_loss"]
    (tmp_path / "old" / CONFIG_FILE).write_text(json.dumps(config))
    loaded = WorldDrivePolicy.from_pretrained(tmp_path / "old").config
    assert loaded.ego_history and loaded.regression_loss == "l1"
