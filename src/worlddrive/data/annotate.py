"""Language for every keyframe: the expert's scene facts, navigation instructions, reasoning text and its parser.

The expert fills a `SceneFacts` from the true world state; `reasoning` turns it into varied text and
`parse_reasoning` reads the facts back, so generated reasoning can be scored fact by fact without a model. That only
works because every fact owns its words: colour words appear only for the light, "right of way"/"priority" only in
the right-of-way clause, and the meta-action is always the last clause (after the last "." or ";") with one verb set
per speed action first and one phrase set per lateral action last.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from worlddrive.sim.state import LIGHT_NAMES

COMMANDS = ("straight", "left", "right", "follow")
SIGNS = ("stop", "yield")
SIDES = ("left", "right", "ahead")
INTENTS = ("cross", "wait")
LEAD_STATES = ("stopped", "slower", "moving")
CUT_IN_SIDES = ("left", "right")
RIGHT_OF_WAY = ("ego", "cross_traffic", "pedestrian", "stop_sign", "light")
SPEED_ACTIONS = ("keep", "accelerate", "slow_down", "stop", "yield", "wait")
LATERAL_ACTIONS = ("straight", "turn_left", "turn_right", "follow_lane", "change_left", "change_right")
MAX_PEDESTRIANS = 3


def _check(name: str, value: object, allowed: tuple) -> None:
    """Reject typos at the expert, not later as silently unparseable text."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r}, expected one of {allowed}")


# --------------------------------------------------------------------------------------------------------------------
# Facts


@dataclass
class PedestrianFact:
    """One pedestrian near the ego's path; `side` is where they stand relative to the ego's heading."""

    side: str
    distance: float
    intent: str
    on_crosswalk: bool = False
    crossing_now: bool = False

    def __post_init__(self) -> None:
        _check("side", self.side, SIDES)
        _check("intent", self.intent, INTENTS)
        if self.crossing_now and self.intent != "cross":
            raise ValueError("a pedestrian crossing now must have intent 'cross'")
        # The expert reads numpy arrays; numpy scalars would not survive json.dumps.
        self.distance = float(self.distance)
        self.on_crosswalk = bool(self.on_crosswalk)
        self.crossing_now = bool(self.crossing_now)


@dataclass
class LeadFact:
    """The vehicle ahead in the ego lane."""

    distance: float
    speed: float
    state: str

    def __post_init__(self) -> None:
        _check("lead state", self.state, LEAD_STATES)
        self.distance = float(self.distance)
        self.speed = float(self.speed)


@dataclass
class SceneFacts:
    """The structured truth behind one keyframe's reasoning text, filled by the privileged expert."""

    command: str
    light: str | None = None
    light_distance: float | None = None
    sign: str | None = None
    sign_distance: float | None = None
    speed_limit_kmh: int = 50
    pedestrians: list[PedestrianFact] = field(default_factory=list)
    lead: LeadFact | None = None
    cut_in: str | None = None
    right_of_way: str = "ego"
    speed_action: str = "keep"
    lateral_action: str = "follow_lane"
    ego_speed: float = 0.0

    def __post_init__(self) -> None:
        _check("command", self.command, COMMANDS)
        _check("light", self.light, (None, *LIGHT_NAMES))
        _check("sign", self.sign, (None, *SIGNS))
        _check("cut_in", self.cut_in, (None, *CUT_IN_SIDES))
        _check("right_of_way", self.right_of_way, RIGHT_OF_WAY)
        _check("speed_action", self.speed_action, SPEED_ACTIONS)
        _check("lateral_action", self.lateral_action, LATERAL_ACTIONS)
        if len(self.pedestrians) > MAX_PEDESTRIANS:
            raise ValueError(f"at most {MAX_PEDESTRIANS} pedestrians, got {len(self.pedestrians)}")
        # The text may only name who gives priority if that agent is in the facts.
        present = {"pedestrian": bool(self.pedestrians), "light": self.light is not None}
        present["stop_sign"] = self.sign == "stop"
        if not present.get(self.right_of_way, True):
            raise ValueError(f"right_of_way={self.right_of_way!r} but the scene has no such agent")
        self.pedestrians = sorted(self.pedestrians, key=lambda p: p.distance)  # the text describes the nearest first
        self.light_distance = None if self.light_distance is None else float(self.light_distance)
        self.sign_distance = None if self.sign_distance is None else float(self.sign_distance)
        self.speed_limit_kmh = int(self.speed_limit_kmh)
        self.ego_speed = float(self.ego_speed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SceneFacts:
        data = dict(data)
        data["pedestrians"] = [PedestrianFact(**p) for p in data.get("pedestrians", [])]
        if data.get("lead") is not None:
            data["lead"] = LeadFact(**data["lead"])
        return cls(**data)


# --------------------------------------------------------------------------------------------------------------------
# Instructions


def _sided(templates: tuple[str, ...], side: str) -> tuple[str, ...]:
    return tuple(t.replace("{lr}", side) for t in templates)


def _pool(turn: tuple[str, ...], straight: tuple[str, ...], follow: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    return {"straight": straight, "left": _sided(turn, "left"), "right": _sided(turn, "right"), "follow": follow}


# Two disjoint paraphrase pools: the held-out one ("crossroads", "swing", "proceed", ...) is only used to test
# whether the model generalises to unseen wordings of the same command.
INSTRUCTION_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "train": _pool(
        turn=(
            "turn {lr} at the next intersection",
            "take the next {lr}",
            "at the junction, go {lr}",
            "make a {lr} turn at the next junction",
            "go {lr} at the next crossing",
            "turn {lr} at the upcoming junction",
            "your next move is a {lr} turn",
            "at the next intersection, turn {lr}",
        ),
        straight=(
            "keep straight through the crossing",
            "go straight at the next intersection",
            "continue straight ahead at the junction",
            "drive straight across the intersection",
            "don't turn, go straight through the junction",
            "at the next junction, keep going straight",
            "straight on at the crossing",
        ),
        follow=(
            "follow the road",
            "continue along this street",
            "keep following the road",
            "stay on this road",
            "just keep driving along the road",
            "drive on along the street",
            "keep to the road you are on",
        ),
    ),
    "heldout": _pool(
        turn=(
            "swing {lr} when you reach the crossroads",
            "at the coming crossroads, head {lr}",
            "the route bends {lr} at the next crossroads",
            "once at the crossroads, steer {lr}",
        ),
        straight=(
            "carry straight over the crossroads",
            "pass directly through the coming crossroads",
            "no turns at the crossroads, just straight across",
            "hold your course over the next crossroads",
        ),
        follow=(
            "proceed down this road",
            "keep going the way the road leads",
            "remain on the current road",
            "carry on down the street as it goes",
        ),
    ),
}

DISTANCE_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "train": _pool(
        turn=(
            "in about {d} metres, turn {lr}",
            "after {d} metres, take the {lr}",
            "turn {lr} in {d} m",
            "{d} metres ahead, go {lr} at the junction",
        ),
        straight=(
            "in about {d} metres, go straight through the intersection",
            "after {d} metres, keep straight at the junction",
            "go straight at the crossing in {d} m",
        ),
        follow=(
            "follow the road for about {d} metres",
            "continue along this street for {d} metres",
            "stay on this road for the next {d} m",
        ),
    ),
    "heldout": _pool(
        turn=(
            "{d} metres from here, swing {lr} at the crossroads",
            "once you have covered about {d} metres, head {lr}",
        ),
        straight=(
            "{d} metres from here, carry straight over the crossroads",
            "once you have covered about {d} metres, pass directly through the crossroads",
        ),
        follow=(
            "proceed down this road for roughly {d} metres",
            "remain on the current road for the coming {d} metres",
        ),
    ),
}


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def instruction(
    command: str, rng: np.random.Generator, *, heldout: bool = False, distance_m: float | None = None
) -> str:
    """A paraphrased navigation instruction; with `distance_m`, one that says how far ahead (rounded to 10 m)."""
    _check("command", command, COMMANDS)
    pool = "heldout" if heldout else "train"
    if distance_m is None:
        return _sentence(_pick(rng, INSTRUCTION_TEMPLATES[pool][command]))
    metres = max(10, round(distance_m / 10) * 10)
    return _sentence(_pick(rng, DISTANCE_TEMPLATES[pool][command]).format(d=metres))


# --------------------------------------------------------------------------------------------------------------------
# Reasoning templates. Slots: {c} light colour, {k} sign kind, {d} distance, {v} speed, {kmh} limit, {lr} left/right,
# {where} "on the left"/"ahead", {origin} "from the left"/"ahead", {at} where a pedestrian stands, {on} crosswalk.
# No template contains "." or ";" (they end clauses) and scene clauses contain no "," (it separates them).

_LIGHT = {
    "distance": (
        "the traffic light {d} ahead is {c}",
        "the light at the stop line {d} ahead shows {c}",
        "there is a {c} light {d} ahead",
        "{d} ahead the light is {c}",
    ),
    "plain": ("the light ahead is {c}", "the signal ahead shows {c}", "there is a {c} light ahead"),
}
_SIGN = {
    "distance": (
        "there is a {k} sign {d} ahead",
        "a {k} sign controls the junction {d} ahead",
        "the junction {d} ahead has a {k} sign",
    ),
    "plain": (
        "there is a {k} sign ahead",
        "the junction ahead has a {k} sign",
        "a {k} sign controls the next junction",
    ),
}
_PED_FIRST = {
    "crossing": (
        "a pedestrian is crossing {origin}{on}",
        "a pedestrian {d} away is crossing {origin}{on}",
        "a person is crossing {origin}{on} at this moment",
    ),
    "cross": (
        "a pedestrian {where} is about to cross",
        "a pedestrian {at} {where} intends to cross",
        "a person {where} {d} away is stepping out to cross",
        "a pedestrian {where} wants to cross",
    ),
    "wait": (
        "a pedestrian waits {at} {where}",
        "a pedestrian {where} is waiting {at}",
        "a person {d} away stands waiting {at} {where}",
    ),
}
_PED_OTHER = {
    "crossing": ("another one is crossing {origin}", "a second one is crossing {origin}{on}"),
    "cross": ("another one {where} is about to cross", "one more {where} intends to cross"),
    "wait": ("another one waits {at} {where}", "one more {where} is waiting"),
}
_LEAD = {
    "stopped": (
        "the car ahead is stopped {d} away",
        "a stopped vehicle sits {d} ahead",
        "the lead car has stopped {d} in front of us",
        "the car {d} ahead is at a standstill",
    ),
    "slower": (
        "the car {d} ahead is slower than us",
        "a slower vehicle drives {d} ahead",
        "the lead car {d} in front is going slower at {v}",
    ),
    "moving": (
        "the car {d} ahead is moving at {v}",
        "a vehicle {d} ahead is moving along at {v}",
        "the lead car keeps moving {d} in front",
    ),
}
_CUT_IN = (
    "a car is cutting in from the {lr}",
    "a vehicle on the {lr} is cutting into our lane",
    "someone on the {lr} is cutting in ahead of us",
)
_CLEAR = ("the road ahead is clear", "nothing is in the way", "the way ahead is free", "there is nothing to react to")
_ROW = {
    "ego": ("we have the right of way", "the right of way is ours", "we have priority here"),
    "cross_traffic": (
        "traffic on the other road has the right of way",
        "the other road has priority",
        "priority goes to the traffic on the main road",
    ),
    "pedestrian": (
        "the pedestrian has the right of way",
        "priority goes to the pedestrian",
        "the person on foot has the right of way",
    ),
    "stop_sign": (
        "the stop sign takes priority",
        "the stop sign sets the right of way",
        "the stop sign means the others have priority",
    ),
    "light": (
        "the light controls the right of way",
        "the signal sets the priority here",
        "priority is set by the light",
    ),
}
_LIMIT = ("the limit here is {kmh} km/h", "the speed limit is {kmh} km/h", "this is a {kmh} km/h zone")

_SPEED = {
    "keep": ("keep the speed", "maintain the current speed", "hold a steady speed", "carry on at the same speed"),
    "accelerate": ("accelerate", "speed up", "pick up speed", "gain speed"),
    "slow_down": ("slow down", "ease off", "decelerate", "reduce speed", "brake gently"),
    "stop": ("stop", "come to a stop", "come to a full stop", "brake to a stop", "halt"),
    "yield": ("yield", "give way"),
    "wait": ("wait", "hold position", "stay stopped", "remain stationary"),
}
_TURN = ("turn {lr}", "take the {lr} turn", "make the {lr} turn")
_CHANGE = ("change to the {lr} lane", "move over into the {lr} lane", "switch to the {lr} lane")
_LATERAL = {
    "straight": ("go straight", "continue straight", "keep straight on", "drive straight through"),
    "turn_left": _sided(_TURN, "left"),
    "turn_right": _sided(_TURN, "right"),
    "follow_lane": ("follow the lane", "stay in the lane", "keep to the lane", "keep in lane"),
    "change_left": _sided(_CHANGE, "left"),
    "change_right": _sided(_CHANGE, "right"),
}
_LEAD_INS = ("", "so ", "therefore ", "the plan is to ", "we should ")
_THEN = (" and ", ", then ", " and then ")

_REASONING_TEMPLATES: tuple[tuple[str, ...], ...] = (
    *_LIGHT.values(),
    *_SIGN.values(),
    *_PED_FIRST.values(),
    *_PED_OTHER.values(),
    *_LEAD.values(),
    _CUT_IN,
    _CLEAR,
    *_ROW.values(),
    _LIMIT,
    *_SPEED.values(),
    *_LATERAL.values(),
)


# --------------------------------------------------------------------------------------------------------------------
# Reasoning generation


def _distance(metres: float, rng: np.random.Generator) -> str:
    return f"{max(1, round(metres))} {_pick(rng, ('m', 'metres'))}"


def _pedestrian_state(p: PedestrianFact) -> str:
    return "crossing" if p.crossing_now else p.intent


def _pedestrian_slots(p: PedestrianFact, rng: np.random.Generator) -> dict[str, str]:
    ahead = p.side == "ahead"
    return {
        "where": "ahead" if ahead else f"on the {p.side}",
        "origin": "ahead" if ahead else f"from the {p.side}",
        "at": "at the crosswalk" if p.on_crosswalk else _pick(rng, ("at the curb", "on the sidewalk")),
        "on": " on the crosswalk" if p.on_crosswalk else "",
        "d": _distance(p.distance, rng),
    }


def _pedestrian_clause(pedestrians: list[PedestrianFact], rng: np.random.Generator) -> str:
    """One comma-free clause, nearest first, so the first intent word after "pedestrian" is the nearest one's."""
    first, *others = pedestrians
    clause = _pick(rng, _PED_FIRST[_pedestrian_state(first)]).format(**_pedestrian_slots(first, rng))
    if not others:
        return clause
    rest = [_pick(rng, _PED_OTHER[_pedestrian_state(p)]).format(**_pedestrian_slots(p, rng)) for p in others]
    return f"{clause} while {' and '.join(rest)}"


def _light_clause(facts: SceneFacts, rng: np.random.Generator) -> str:
    if facts.light_distance is None:
        return _pick(rng, _LIGHT["plain"]).format(c=facts.light)
    return _pick(rng, _LIGHT["distance"]).format(c=facts.light, d=_distance(facts.light_distance, rng))


def _sign_clause(facts: SceneFacts, rng: np.random.Generator) -> str:
    if facts.sign_distance is None:
        return _pick(rng, _SIGN["plain"]).format(k=facts.sign)
    return _pick(rng, _SIGN["distance"]).format(k=facts.sign, d=_distance(facts.sign_distance, rng))


def _lead_clause(lead: LeadFact, rng: np.random.Generator) -> str:
    return _pick(rng, _LEAD[lead.state]).format(d=_distance(lead.distance, rng), v=f"{round(lead.speed)} m/s")


def _scene_clauses(facts: SceneFacts, rng: np.random.Generator) -> list[str]:
    """Scene clauses in the fixed order: light, sign, pedestrians, lead, cut-in, right of way, speed limit."""
    clauses = []
    if facts.light is not None:
        clauses.append(_light_clause(facts, rng))
    if facts.sign is not None:
        clauses.append(_sign_clause(facts, rng))
    if facts.pedestrians:
        clauses.append(_pedestrian_clause(facts.pedestrians, rng))
    if facts.lead is not None:
        clauses.append(_lead_clause(facts.lead, rng))
    if facts.cut_in is not None:
        clauses.append(_pick(rng, _CUT_IN).format(lr=facts.cut_in))
    # "We have the right of way" only says something where someone else could have had it.
    contested = bool(facts.pedestrians) or any(x is not None for x in (facts.light, facts.sign, facts.cut_in))
    if not clauses:
        clauses.append(_pick(rng, _CLEAR))
    if facts.right_of_way != "ego" or contested:
        clauses.append(_pick(rng, _ROW[facts.right_of_way]))
    if facts.speed_action == "accelerate" or facts.ego_speed * 3.6 > facts.speed_limit_kmh:
        clauses.append(_pick(rng, _LIMIT).format(kmh=facts.speed_limit_kmh))
    return clauses


def _pedestrian_ref(p: PedestrianFact, rng: np.random.Generator) -> str:
    slots = _pedestrian_slots(p, rng)
    if p.crossing_now:
        described = "the crossing pedestrian"
    elif p.intent == "cross":
        described = f"the pedestrian about to cross {slots['origin']}"
    else:
        described = f"the waiting pedestrian {slots['where']}"
    return _pick(rng, (described, f"the pedestrian {slots['where']}"))


def _action_target(facts: SceneFacts, rng: np.random.Generator) -> str:
    """Whom or what the action reacts to ("yield to the pedestrian on the right"); empty when nothing is obvious."""
    if facts.speed_action in ("keep", "accelerate") or rng.random() < 0.3:
        return ""
    prep = "to" if facts.speed_action == "yield" else "for"
    if facts.right_of_way == "pedestrian":
        pedestrian = next((p for p in facts.pedestrians if p.intent == "cross"), facts.pedestrians[0])
        return f" {prep} {_pedestrian_ref(pedestrian, rng)}"
    if facts.right_of_way == "light":
        return f" at the {facts.light} light"
    if facts.right_of_way == "stop_sign":
        return " at the stop sign"
    if facts.right_of_way == "cross_traffic":
        return f" {prep} the traffic on the other road"
    if facts.cut_in is not None:
        return f" {prep} the car cutting in from the {facts.cut_in}"
    if facts.lead is not None and facts.lead.state != "moving":
        return f" behind the {facts.lead.state} car"
    return ""


def _action_clause(facts: SceneFacts, rng: np.random.Generator) -> str:
    """Speed phrase first, lateral phrase last: the parser relies on that order, not on the words in between."""
    speed = _pick(rng, _SPEED[facts.speed_action])
    lateral = _pick(rng, _LATERAL[facts.lateral_action])
    return f"{_pick(rng, _LEAD_INS)}{speed}{_action_target(facts, rng)}{_pick(rng, _THEN)}{lateral}"


def _list_join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + ", and " + parts[-1]


def _group(clauses: list[str], rng: np.random.Generator) -> list[str]:
    """Pack the scene clauses into 1-3 sentences, joined by "," or ";" so the parser can split them again."""
    n = len(clauses)
    k = int(rng.integers(math.ceil(n / 3), min(n, 3) + 1))
    bounds = np.linspace(0, n, k + 1).round().astype(int)
    chunks = [clauses[a:b] for a, b in itertools.pairwise(bounds)]
    return ["; ".join(c) if rng.random() < 0.5 else _list_join(c) for c in chunks]


def reasoning(facts: SceneFacts, rng: np.random.Generator) -> str:
    """1-4 sentences describing the scene in a fixed order, ending with the expert's meta-action."""
    sentences = _group(_scene_clauses(facts, rng), rng)
    action = _action_clause(facts, rng)
    if rng.random() < 0.5:
        sentences[-1] += "; " + action
    else:
        sentences.append(action)
    return " ".join(_sentence(s) for s in sentences)


# --------------------------------------------------------------------------------------------------------------------
# Parsing and scoring

_COLOUR_RE = re.compile(r"\b(green|yellow|red)\b")
_SIGN_RE = re.compile(r"\b(stop|yield) sign\b")
_PEDESTRIAN_RE = re.compile(r"\b(pedestrian|person)\b")
_ROW_RE = re.compile(r"\b(right of way|priority)\b")
_CUT_IN_RE = re.compile(r"\bcutting in")
_LEAD_RE = re.compile(r"\b(car|vehicle)\b")
_SIDE_RE = re.compile(r"\b(left|right)\b")
_INTENT_RE = re.compile(r"\b(cross|wait)(?:s|es|ing)?\b")
_LEAD_STATE_RE = re.compile(r"\b(stopped|standstill|slower|moving)\b")
_SENTENCE_END_RE = re.compile(r"[.;](?:\s+|$)")

# Topic of a scene segment, tested in this order (a right-of-way clause may name the pedestrian or the stop sign).
_TOPICS = (
    ("right_of_way", _ROW_RE),
    ("light", _COLOUR_RE),
    ("sign", _SIGN_RE),
    ("pedestrian", _PEDESTRIAN_RE),
    ("cut_in", _CUT_IN_RE),
    ("lead", _LEAD_RE),
)
# Who has priority, tested in this order within the right-of-way clause; none of these means the ego.
_ROW_SUBJECTS = (
    ("pedestrian", _PEDESTRIAN_RE),
    ("stop_sign", re.compile(r"\bstop sign\b")),
    ("light", re.compile(r"\b(light|signal)\b")),
    ("cross_traffic", re.compile(r"\b(other|main) road\b")),
)


def _phrase_matcher(bank: dict[str, tuple[str, ...]]) -> tuple[re.Pattern[str], dict[str, str]]:
    """One alternation, longest phrase first, so "come to a full stop" wins over "stop" at the same position."""
    labels = {phrase: label for label, phrases in bank.items() for phrase in phrases}
    alternatives = "|".join(re.escape(p) for p in sorted(labels, key=len, reverse=True))
    return re.compile(rf"\b({alternatives})\b"), labels


_SPEED_MATCHER = _phrase_matcher(_SPEED)
_LATERAL_MATCHER = _phrase_matcher(_LATERAL)


def _phrase_label(text: str, matcher: tuple[re.Pattern[str], dict[str, str]], *, last: bool) -> str | None:
    pattern, labels = matcher
    hits = pattern.findall(text)
    return labels[hits[-1 if last else 0]] if hits else None


def _segments_by_topic(scene: str) -> dict[str, str]:
    """The first scene segment of each topic; later ones (e.g. "another one ...") describe farther agents."""
    found: dict[str, str] = {}
    for segment in re.split(r"[,.;]", scene):
        topic = next((name for name, pattern in _TOPICS if pattern.search(segment)), None)
        if topic is not None:
            found.setdefault(topic, segment)
    return found


def _first_group(pattern: re.Pattern[str], text: str | None) -> str | None:
    match = pattern.search(text) if text is not None else None
    return match.group(1) if match else None


def _right_of_way(segment: str | None) -> str:
    if segment is None:
        return "ego"
    return next((name for name, pattern in _ROW_SUBJECTS if pattern.search(segment)), "ego")


def parse_reasoning(text: str) -> dict[str, str | None]:
    """Recover the scored facts from reasoning text; fields the text does not mention come back None (or "ego")."""
    parts = _SENTENCE_END_RE.split(text.lower().strip())
    parts = [p for p in parts if p.strip()] or [""]
    scene, action = " . ".join(parts[:-1]), parts[-1]
    topics = _segments_by_topic(scene)
    lead = _first_group(_LEAD_STATE_RE, topics.get("lead"))
    return {
        "light": _first_group(_COLOUR_RE, topics.get("light")),
        "sign": _first_group(_SIGN_RE, topics.get("sign")),
        "pedestrian_intent": _first_group(_INTENT_RE, topics.get("pedestrian")),
        "lead": "stopped" if lead == "standstill" else lead,
        "cut_in": _first_group(_SIDE_RE, topics.get("cut_in")),
        "right_of_way": _right_of_way(topics.get("right_of_way")),
        "speed_action": _phrase_label(action, _SPEED_MATCHER, last=False),
        "lateral_action": _phrase_label(action, _LATERAL_MATCHER, last=True),
    }


def expected_facts(facts: SceneFacts) -> dict[str, str | None]:
    """The facts as `parse_reasoning` should report them for a correct text."""
    return {
        "light": facts.light,
        "sign": facts.sign,
        "pedestrian_intent": facts.pedestrians[0].intent if facts.pedestrians else None,
        "lead": facts.lead.state if facts.lead is not None else None,
        "cut_in": facts.cut_in,
        "right_of_way": facts.right_of_way,
        "speed_action": facts.speed_action,
        "lateral_action": facts.lateral_action,
    }


def fact_accuracy(pred_text: str, facts: SceneFacts) -> dict[str, float]:
    """Per-field 0/1 agreement between the parsed text and the truth, plus their mean."""
    truth = expected_facts(facts)
    parsed = parse_reasoning(pred_text)
    scores = {name: float(parsed[name] == value) for name, value in truth.items()}
    scores["mean"] = sum(scores.values()) / len(truth)
    return scores


# --------------------------------------------------------------------------------------------------------------------
# Corpus

_SLOT_EXAMPLES = tuple(
    {"c": c, "k": k, "lr": lr, "where": where, "origin": origin, "at": at, "on": on, "d": d, "v": "6 m/s", "kmh": kmh}
    for c, k, lr, where, origin, at, on, d, kmh in (
        ("green", "stop", "left", "on the left", "from the left", "at the curb", "", "12 m", "30"),
        ("yellow", "yield", "right", "on the right", "from the right", "on the sidewalk", "", "35 metres", "50"),
        ("red", "stop", "left", "ahead", "ahead", "at the crosswalk", " on the crosswalk", "8 m", "70"),
    )
)


def corpus_lines(include_heldout: bool = False) -> Iterator[str]:
    """Every template once per example slot filling, so a tokenizer learns the real words rather than the braces.

    Held-out instructions are left out by default: a tokenizer fitted on them would leak the generalisation test.
    """
    seen: set[str] = set()
    for line in _filled_templates(("train", "heldout") if include_heldout else ("train",)):
        if line not in seen:
            seen.add(line)
            yield line


def _filled_templates(pools: tuple[str, ...]) -> Iterator[str]:
    for pool in pools:
        for bank in (INSTRUCTION_TEMPLATES[pool], DISTANCE_TEMPLATES[pool]):
            for templates in bank.values():
                yield from (t.format(d=80) for t in templates)
    for templates in _REASONING_TEMPLATES:
        for slots in _SLOT_EXAMPLES:
            yield from (t.format(**slots) for t in templates)
