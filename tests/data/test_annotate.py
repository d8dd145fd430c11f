"""Reasoning text must stay varied yet parse back to exactly the facts it was written from."""

import json
import re

import numpy as np
import pytest

from worlddrive.data.annotate import (
    COMMANDS,
    DISTANCE_TEMPLATES,
    INSTRUCTION_TEMPLATES,
    LATERAL_ACTIONS,
    LEAD_STATES,
    MAX_PEDESTRIANS,
    SIDES,
    SPEED_ACTIONS,
    LeadFact,
    PedestrianFact,
    SceneFacts,
    corpus_lines,
    expected_facts,
    fact_accuracy,
    instruction,
    parse_reasoning,
    reasoning,
)
from worlddrive.sim.state import LIGHT_NAMES

PEDESTRIAN_WORDS = re.compile(r"\b(pedestrian|person|crosswalk|crossing|cross|walker)\b", re.IGNORECASE)


def _maybe(rng: np.random.Generator, value):
    return value if rng.random() < 0.5 else None


def _random_pedestrian(rng: np.random.Generator) -> PedestrianFact:
    intent = str(rng.choice(["cross", "wait"]))
    return PedestrianFact(
        side=str(rng.choice(SIDES)),
        distance=float(rng.uniform(2, 40)),
        intent=intent,
        on_crosswalk=bool(rng.random() < 0.5),
        crossing_now=intent == "cross" and bool(rng.random() < 0.5),
    )


def random_facts(rng: np.random.Generator) -> SceneFacts:
    """Any consistent scene, including odd combinations the expert would rarely produce."""
    light = _maybe(rng, str(rng.choice(LIGHT_NAMES)))
    sign = _maybe(rng, str(rng.choice(["stop", "yield"])))
    pedestrians = [_random_pedestrian(rng) for _ in range(int(rng.integers(0, MAX_PEDESTRIANS + 1)))]
    lead = _maybe(rng, LeadFact(float(rng.uniform(3, 60)), float(rng.uniform(0, 15)), str(rng.choice(LEAD_STATES))))
    row = ["ego", "cross_traffic"] + ["pedestrian"] * bool(pedestrians) + ["light"] * bool(light)
    row += ["stop_sign"] * (sign == "stop")
    return SceneFacts(
        command=str(rng.choice(COMMANDS)),
        light=light,
        light_distance=_maybe(rng, float(rng.uniform(5, 80))) if light else None,
        sign=sign,
        sign_distance=_maybe(rng, float(rng.uniform(5, 80))) if sign else None,
        speed_limit_kmh=int(rng.choice([30, 50, 70])),
        pedestrians=pedestrians,
        lead=lead,
        cut_in=_maybe(rng, str(rng.choice(["left", "right"]))),
        right_of_way=str(rng.choice(row)),
        speed_action=str(rng.choice(SPEED_ACTIONS)),
        lateral_action=str(rng.choice(LATERAL_ACTIONS)),
        ego_speed=float(rng.uniform(0, 20)),
    )


BUSY = SceneFacts(
    command="straight",
    light="green",
    light_distance=34.0,
    pedestrians=[PedestrianFact("right", 8.0, "cross"), PedestrianFact("left", 15.0, "wait", on_crosswalk=True)],
    right_of_way="pedestrian",
    speed_action="yield",
    lateral_action="straight",
    ego_speed=6.0,
)


def _sentences(text: str) -> int:
    return len(re.findall(r"[.](?:\s|$)", text))


def test_reasoning_is_deterministic_for_a_seeded_rng():
    assert reasoning(BUSY, np.random.default_rng(7)) == reasoning(BUSY, np.random.default_rng(7))
    assert instruction("left", np.random.default_rng(7)) == instruction("left", np.random.default_rng(7))


def test_reasoning_varies_across_seeds():
    texts = {reasoning(BUSY, np.random.default_rng(seed)) for seed in range(50)}
    assert len(texts) >= 5
    empty = {reasoning(SceneFacts(command="follow"), np.random.default_rng(seed)) for seed in range(50)}
    assert len(empty) >= 5


def test_round_trip_parse_recovers_every_fact():
    rng = np.random.default_rng(0)
    for i in range(600):
        facts = random_facts(rng)
        text = reasoning(facts, np.random.default_rng(i))
        assert parse_reasoning(text) == expected_facts(facts), text
        assert fact_accuracy(text, facts)["mean"] == 1.0
        assert 1 <= _sentences(text) <= 4, text


def test_red_light_is_named_and_absent_pedestrians_never_mentioned():
    rng = np.random.default_rng(1)
    for i in range(300):
        facts = random_facts(rng)
        text = reasoning(facts, np.random.default_rng(i))
        if facts.light == "red":
            assert re.search(r"\bred\b", text, re.IGNORECASE), text
        if not facts.pedestrians:
            assert not PEDESTRIAN_WORDS.search(text), text


def test_empty_scene_is_short():
    for seed in range(20):
        text = reasoning(SceneFacts(command="follow"), np.random.default_rng(seed))
        assert _sentences(text) <= 2 and len(text) < 100, text
        assert parse_reasoning(text)["speed_action"] == "keep"


def test_fact_accuracy_flags_wrong_fields():
    text = "The light ahead is red; a pedestrian on the left waits at the curb. Stop and then turn left."
    facts = SceneFacts(
        command="left",
        light="green",
        pedestrians=[PedestrianFact("left", 5.0, "wait")],
        speed_action="keep",
        lateral_action="turn_left",
    )
    scores = fact_accuracy(text, facts)
    assert scores["light"] == 0.0 and scores["speed_action"] == 0.0
    assert scores["pedestrian_intent"] == 1.0 and scores["lateral_action"] == 1.0
    assert scores["mean"] == pytest.approx(6 / 8)


def test_parse_of_unrelated_text_finds_nothing():
    parsed = parse_reasoning("I like trains.")
    assert parsed["light"] is None and parsed["speed_action"] is None and parsed["lateral_action"] is None


def test_to_dict_from_dict_round_trip_is_json_safe():
    rng = np.random.default_rng(2)
    for _ in range(50):
        facts = random_facts(rng)
        assert SceneFacts.from_dict(json.loads(json.dumps(facts.to_dict()))) == facts
    numpy_facts = SceneFacts(command="left", pedestrians=[PedestrianFact("left", np.float32(3.5), "wait", np.bool_(1))])
    json.dumps(numpy_facts.to_dict())


def test_pedestrians_are_sorted_nearest_first():
    far, near = PedestrianFact("left", 20.0, "wait"), PedestrianFact("right", 5.0, "cross")
    assert SceneFacts(command="follow", pedestrians=[far, near]).pedestrians == [near, far]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"command": "backwards"},
        {"command": "left", "light": "blue"},
        {"command": "left", "right_of_way": "pedestrian"},
        {"command": "left", "right_of_way": "light"},
        {"command": "left", "sign": "yield", "right_of_way": "stop_sign"},
        {"command": "left", "pedestrians": [PedestrianFact("left", 1.0, "wait")] * 4},
    ],
)
def test_inconsistent_facts_are_rejected(kwargs):
    with pytest.raises(ValueError):
        SceneFacts(**kwargs)


def test_crossing_pedestrian_must_intend_to_cross():
    with pytest.raises(ValueError):
        PedestrianFact("left", 3.0, "wait", crossing_now=True)


@pytest.mark.parametrize("bank", [INSTRUCTION_TEMPLATES, DISTANCE_TEMPLATES])
def test_heldout_instructions_are_disjoint_and_cover_every_command(bank):
    train = {t for templates in bank["train"].values() for t in templates}
    heldout = {t for templates in bank["heldout"].values() for t in templates}
    assert not train & heldout
    for pool in ("train", "heldout"):
        assert set(bank[pool]) == set(COMMANDS)
        assert all(bank[pool][command] for command in COMMANDS)


def test_instruction_draws_from_the_requested_pool():
    for command in COMMANDS:
        for seed in range(20):
            text = instruction(command, np.random.default_rng(seed), heldout=True)
            assert text[:-1].lower() in INSTRUCTION_TEMPLATES["heldout"][command]
            assert text[:-1].lower() not in INSTRUCTION_TEMPLATES["train"][command]


def test_instruction_with_distance_rounds_to_ten_metres():
    text = instruction("right", np.random.default_rng(0), distance_m=83.0)
    assert "80" in text and "right" in text
    with pytest.raises(ValueError):
        instruction("around", np.random.default_rng(0))


def test_corpus_lines_are_filled_unique_and_leave_out_heldout():
    lines = list(corpus_lines())
    assert len(lines) == len(set(lines)) > 100
    assert not any("{" in line for line in lines)
    assert "take the next left" in lines
    heldout = {t.format(d=80) for templates in INSTRUCTION_TEMPLATES["heldout"].values() for t in templates}
    assert not heldout & set(lines)
    assert heldout <= set(corpus_lines(include_heldout=True))
