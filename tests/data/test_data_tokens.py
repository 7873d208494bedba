"""Tokenizer rules and versioning; vocabulary ids, tie-breaking, max_words/min_freq, JSON round trip."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from rnnlab.data import Tokenizer, Vocabulary
from rnnlab.data import tokenizer as tok_mod


@pytest.mark.parametrize(
    "text, tokens",
    [
        ("Don't stop<br />the 80's!", ["don't", "stop", "the", "80's"]),
        ("A <br /><br />GREAT film, isn't it?", ["a", "great", "film", "isn't", "it"]),
        ("'Quoted' words'' and rock'n'roll", ["quoted", "words", "and", "rock'n'roll"]),
        ("snake_case<BR/>tab\tnew\nline<br>end", ["snake", "case", "tab", "new", "line", "end"]),
        ("Café Ünïcode naïve l'été", ["café", "ünïcode", "naïve", "l'été"]),
        ("...!!!", []),
    ],
)
def test_tokenize_rules(text: str, tokens: list[str]) -> None:
    assert Tokenizer().tokenize(text) == tokens


def test_tokenize_without_lowercasing() -> None:
    assert Tokenizer(lower=False).tokenize("Don't STOP<BR />Ça") == ["Don't", "STOP", "Ça"]


def test_ascii_fast_path_matches_unicode_pattern() -> None:
    rng = random.Random(0)
    alphabet = "abcXYZ019'_ -.,!<>/\n"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        low = tok_mod._BREAK.sub(" ", text.lower())
        assert Tokenizer().tokenize(text) == tok_mod._WORD_UNICODE.findall(low), text


def test_tokenizer_dict_round_trip_and_version_check() -> None:
    t = Tokenizer(lower=False)
    assert Tokenizer.from_dict(t.to_dict()) == t and t.version == "words-1"
    with pytest.raises(ValueError, match=r"tokenizer version 'words-0', this rnnlab has 'words-1'"):
        Tokenizer.from_dict({**t.to_dict(), "version": "words-0"})


def test_vocabulary_ids_and_tie_breaking() -> None:
    docs = [["b", "a", "c"], ["c", "b", "d"], ["a", "e"]]  # a:2 b:2 c:2 d:1 e:1
    v = Vocabulary.build(docs, max_words=None)
    assert v.itos == ["<pad>", "<unk>", "a", "b", "c", "d", "e"]
    assert Vocabulary.build(reversed(docs), max_words=None).itos == v.itos  # order-independent
    assert (v.pad_id, v.unk_id) == (0, 1)
    assert v.encode(["c", "zzz", "a"]) == [4, 1, 2]
    assert v.decode([4, 1, 0]) == ["c", "<unk>", "<pad>"]
    small = Vocabulary.build(docs, max_words=3)  # <unk> + 2 words
    assert small.itos == ["<pad>", "<unk>", "a", "b"] and len(small) == 4
    assert Vocabulary.build(docs, max_words=None, min_freq=2).itos == ["<pad>", "<unk>", "a", "b", "c"]


def test_default_max_words_gives_20001_ids() -> None:
    counts = Counter({f"w{i:05d}": 30000 - i for i in range(25000)})
    v = Vocabulary.from_counter(counts)
    assert len(v) == 20001 and v.itos[2] == "w00000" and v.itos[-1] == "w19998"


def test_vocabulary_json_round_trip_and_errors(tmp_path: Path) -> None:
    v = Vocabulary.build([["x", "y", "x"], ["ünï", "y", "y"]])
    v.save(tmp_path / "vocab.json")
    w = Vocabulary.load(tmp_path / "vocab.json")
    assert w == v and w.counts == [3, 2, 1] and w.encode(["ünï", "q"]) == [4, 1]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad.json: not a vocabulary JSON file"):
        Vocabulary.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": 1, "words": ["a"]}))
    with pytest.raises(ValueError, match=r"other.json: Vocabulary: expected a dict with format 1"):
        Vocabulary.load(tmp_path / "other.json")
    with pytest.raises(FileNotFoundError, match=r"vocabulary file not found: .*missing.json"):
        Vocabulary.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match=r"max_words must be an int >= 1 \(it counts <unk>\) or None, got 0"):
        Vocabulary.build([["a"]], max_words=0)
