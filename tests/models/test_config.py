from __future__ import annotations

import pytest

from worlddrive.models import PRESETS, PolicyConfig
from worlddrive.models.action import EXPERTS
from worlddrive.models.config import ACTION_EXPERTS, ADDED_FIELDS

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_valid_and_round_trip(name: str) -> None:
    config = PolicyConfig.preset(name)
    assert PolicyConfig.from_dict(config.to_dict()) == config


def test_preset_sizes_grow() -> None:
    sizes = [PolicyConfig.preset(n).d_model for n in ("tiny", "small", "base")]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3
    assert PolicyConfig.preset("small").visual_tokens == 128 + 2 * 8


def test_unknown_preset_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="tiny, small, base"):
        PolicyConfig.preset("huge")


def test_unknown_override_is_named() -> None:
    with pytest.raises(KeyError, match="d_modl"):
        PolicyConfig.preset("tiny", d_modl=32)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"action_expert": "diffusion"}, "action_expert='diffusion'"),
        ({"regression_loss": "huber"}, "regression_loss='huber'"),
        ({"wm_heads": ("bev", "lidar")}, "wm_heads"),
        ({"wm_heads": ("bev", "bev")}, "wm_heads"),
        ({"patch_size": 6}, "patch_size=6"),
        ({"image_size": (30, 64)}, "image_size"),
        ({"d_model": 63}, "d_model=63"),
        ({"dropout": 1.0}, "dropout"),
        ({"lambda_lang": -1.0}, "lambda_lang"),
        ({"device": "tpu"}, "device"),
        ({"past_frames": 5}, "past_frames"),
        ({"backbone": "llama"}, "backbone='llama'"),
        ({"backbone": "hf:"}, "backbone='hf:'"),
        ({"instruction_encoder": "bert"}, "instruction_encoder='bert'"),
        ({"speed_limit_input": 1}, "speed_limit_input=1"),
        ({"stop_line_input": "yes"}, "stop_line_input='yes'"),
    ],
)
def test_bad_values_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field.replace("(", r"\(")):
        PolicyConfig.preset("tiny", **overrides)


def test_from_dict_names_unknown_and_missing_keys() -> None:
    data = PolicyConfig.preset("tiny").to_dict()
    del data["n_layers"]
    data["n_layerz"] = 2
    with pytest.raises(ValueError, match=r"unknown keys \['n_layerz'\], missing \['n_layers'\]"):
        PolicyConfig.from_dict(data)


def test_an_older_checkpoint_gets_the_only_backbone_and_instruction_encoder_there_were() -> None:
    data = PolicyConfig.preset("tiny", backbone="hf:/x/config.json", instruction_encoder="minilm").to_dict()
    assert PolicyConfig.from_dict(data).hf_source == "/x/config.json"  # recorded, round trips
    for name in ADDED_FIELDS:
        del data[name]
    config = PolicyConfig.from_dict(data)
    assert (config.backbone, config.instruction_encoder, config.hf_source) == ("native", "bpe", None)
    assert (config.occ_pos_weight, config.planner) == (1.0, "fast")  # the old builtin's head: an unweighted loss
    assert PolicyConfig().occ_pos_weight == 10.0  # what a new run trains with
    del data["n_layers"]  # any other missing key is still named
    with pytest.raises(ValueError, match=r"missing \['n_layers'\]"):
        PolicyConfig.from_dict(data)


def test_every_configurable_expert_exists() -> None:
    assert set(EXPERTS) == set(ACTION_EXPERTS)


def test_auto_device_is_cpu_without_cuda() -> None:
    import torch

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert PolicyConfig.preset("tiny").torch_device.type == expected
