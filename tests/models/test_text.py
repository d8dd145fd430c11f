from __future__ import annotations

from pathlib import Path

import pytest

from worlddrive.models import TextTokenizer, WorldDrivePolicy

pytestmark = pytest.mark.usefixtures("one_thread")


def test_round_trip_is_exact(tokenizer: TextTokenizer, items: list) -> None:
    for item in items:
        for text in (item["instruction"], item["reasoning"], "Unseen words: 1234 m, Zebra!"):
            assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_tokens_and_vocab(tokenizer: TextTokenizer) -> None:
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.sep_id) == (0, 1, 2, 3)
    assert 260 <= tokenizer.vocab_size <= 512
    assert tokenizer.decode([tokenizer.sep_id, *tokenizer.encode("go"), tokenizer.eos_id]) == "go"


def test_pad_truncates_and_pads_to_the_longest(tokenizer: TextTokenizer) -> None:
    ids, mask = tokenizer.pad([[5, 6, 7, 8], [9]], max_length=3)
    assert ids.tolist() == [[5, 6, 7], [9, 0, 0]]
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    assert tokenizer.pad([[5], [6, 7]], max_length=10)[0].shape == (2, 2)


def test_save_load(tokenizer: TextTokenizer, tmp_path: Path) -> None:
    tokenizer.save(tmp_path)
    loaded = TextTokenizer.load(tmp_path)
    text = "A pedestrian waits at the curb on the right."
    assert loaded.encode(text) == tokenizer.encode(text)


def test_collate_lays_reasoning_out_as_sep_text_eos(make_policy, items: list) -> None:
    policy: WorldDrivePolicy = make_policy()
    batch = policy.collate(items[:2])
    tok = policy.tokenizer
    for row, mask, item in zip(batch["reasoning_ids"], batch["reasoning_mask"], items[:2], strict=True):
        ids = row[mask].tolist()
        assert ids[0] == tok.sep_id
        assert tok.decode(ids) == item["reasoning"][: len(tok.decode(ids))]
        assert ids[-1] == tok.eos_id or len(ids) == policy.config.max_reasoning_tokens
    assert batch["instruction_ids"].shape[1] <= policy.config.max_instruction_tokens
    assert batch["camera"].shape == (2, 3, 3, 128, 256)
