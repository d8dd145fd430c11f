"""The policy network (DESIGN.md "Model"): vision encoder, text tokenizer, shared backbone, action experts."""

from worlddrive.models.action import AutoregressiveTokens, FlowMatching, QueryRegression
from worlddrive.models.backbone import SEGMENTS, Backbone, Block, KVCache, Layout
from worlddrive.models.config import PRESETS, PolicyConfig
from worlddrive.models.policy import WorldDrivePolicy, check_finite, collate
from worlddrive.models.text import TextTokenizer, corpus, train_tokenizer
from worlddrive.models.vision import VisionEncoder

__all__ = [
    "PRESETS",
    "SEGMENTS",
    "AutoregressiveTokens",
    "Backbone",
    "Block",
    "FlowMatching",
    "KVCache",
    "Layout",
    "PolicyConfig",
    "QueryRegression",
    "TextTokenizer",
    "VisionEncoder",
    "WorldDrivePolicy",
    "check_finite",
    "collate",
    "corpus",
    "train_tokenizer",
]
