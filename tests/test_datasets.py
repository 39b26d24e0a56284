"""JSONL formats: valid data round-trips; every malformed line is rejected naming file, line and field."""

from __future__ import annotations

import json
import re

import pytest

from helpers import datasets as D
from helpers.world import World


def write_lines(path, lines: list[str | bytes]) -> None:
    with open(path, "wb") as fh:
        for line in lines:
            fh.write((line if isinstance(line, bytes) else line.encode("utf-8")) + b"\n")


def good_demo(i: int = 0) -> str:
    return json.dumps({"prompt": f"describe the fox {i}.", "response": "the fox is red."})


def good_ranking() -> str:
    return json.dumps({"prompt": "p", "responses": ["a", "b", "c"], "ranking": [2, 0, 1]})


def good_pair() -> str:
    return json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})


def expect_error(reader, path, line: int, field: str) -> str:
    with pytest.raises(ValueError) as info:
        reader(path)
    msg = str(info.value)
    assert str(path) in msg, msg
    assert re.search(rf"\bline {line}\b", msg), f"expected line {line} in: {msg}"
    assert f"'{field}'" in msg, f"expected field {field!r} in: {msg}"
    return msg


# ----------------------------------------------------------------------------- round trips


def test_round_trip_world_data(tmp_path):
    w = World(0)
    demos = w.demonstrations("val")
    p = tmp_path / "demos.jsonl"
    assert D.write_jsonl(p, demos) == len(demos)
    assert D.read_demonstrations(p) == demos
    assert len(p.read_text(encoding="utf-8").splitlines()) == len(demos)

    prompt = w.prompts("train")[0]
    responses = ["first", "sécond ✓", 'with "quotes"\nand a newline']
    rankings = [{"prompt": prompt, "responses": responses, "ranking": [1, 2, 0]},
                {"prompt": "another", "responses": ["x", ""], "ranking": [0, 1]}]
    p = tmp_path / "rankings.jsonl"
    D.write_jsonl(p, rankings)
    assert D.read_rankings(p) == rankings

    pairs = [{"prompt": "p", "chosen": "good", "rejected": "bad"}]
    p = tmp_path / "pairs.jsonl"
    D.write_jsonl(p, pairs)
    assert D.read_pairs(p) == pairs


def test_unknown_fields_dropped_and_blank_lines_skipped(tmp_path):
    p = tmp_path / "d.jsonl"
    write_lines(p, ["", json.dumps({"id": 7, "prompt": "a", "labeler": "x", "response": "b"}), "   ", good_demo(1)])
    got = D.read_demonstrations(p)
    assert got == [{"prompt": "a", "response": "b"}, {"prompt": "describe the fox 1.", "response": "the fox is red."}]
    assert list(got[0]) == ["prompt", "response"]


def test_append_rankings(tmp_path):
    p = tmp_path / "r.jsonl"
    D.write_jsonl(p, [json.loads(good_ranking())])
    rec = D.append_ranking(p, "q", ["a", "b"], [1, 0], labeler="ana")
    assert rec["labeler"] == "ana"
    D.append_jsonl(p, [{"prompt": "z", "responses": ["1", "2", "3"], "ranking": [0, 1, 2]}])
    got = D.read_rankings(p)
    assert [r["prompt"] for r in got] == ["p", "q", "z"] and got[1] == {"prompt": "q", "responses": ["a", "b"],
                                                                       "ranking": [1, 0]}
    before = p.read_bytes()
    with pytest.raises(ValueError, match="ranking"):
        D.append_ranking(p, "q", ["a", "b"], [0, 0])
    assert p.read_bytes() == before  # nothing written
    # a file whose last line lost its newline still gets a clean new line
    p.write_bytes(before.rstrip(b"\n"))
    D.append_ranking(p, "new", ["a", "b"], [0, 1])
    assert [r["prompt"] for r in D.read_rankings(p)] == ["p", "q", "z", "new"]
    # append to a file that does not exist yet creates it
    q = tmp_path / "fresh.jsonl"
    D.append_ranking(q, "first", ["a", "b"], [1, 0])
    assert len(D.read_rankings(q)) == 1


def test_hh_rlhf_conversion(tmp_path):
    record = {
        "chosen": "\n\nHuman: What is a fox?\n\nAssistant: A small wild dog.\n\nHuman: Colour?\n\nAssistant: Often red.",
        "rejected": "\n\nHuman: What is a fox?\n\nAssistant: A small wild dog.\n\nHuman: Colour?\n\nAssistant: No idea.",
        "extra": 1,
    }
    pair = D.hh_rlhf_to_pair(record)
    assert pair["prompt"].endswith("Human: Colour?\n\nAssistant:") and pair["prompt"].startswith("\n\nHuman: What")
    assert pair["chosen"] == "Often red." and pair["rejected"] == "No idea."
    p = tmp_path / "hh.jsonl"
    D.write_jsonl(p, [{**pair, "source": "hh-rlhf"}])
    assert D.read_pairs(p) == [pair]
    with pytest.raises(ValueError, match="rejected"):
        D.hh_rlhf_to_pair({"chosen": record["chosen"], "rejected": "\n\nHuman: other\n\nAssistant: x"})
    with pytest.raises(ValueError, match="chosen"):
        D.hh_rlhf_to_pair({"chosen": "no turns", "rejected": record["rejected"]})


# ----------------------------------------------------------------------------- malformed lines


@pytest.mark.parametrize(
    "bad, field",
    [
        ('{"prompt": "a", "response": ', "<line>"),  # truncated JSON
        ("not json at all", "<line>"),
        ('["prompt", "response"]', "<line>"),  # valid JSON, not an object
        ('{"prompt": "a"}', "response"),  # missing field
        ('{"response": "a"}', "prompt"),
        ('{"prompt": "a", "response": 3}', "response"),  # wrong type
        ('{"prompt": null, "response": "b"}', "prompt"),
        ('{"prompt": "  ", "response": "b"}', "prompt"),  # blank prompt
    ],
)
def test_demonstrations_reject(tmp_path, bad, field):
    p = tmp_path / "d.jsonl"
    write_lines(p, [good_demo(0), "", bad, good_demo(1)])  # the blank line still counts: bad is line 3
    expect_error(D.read_demonstrations, p, 3, field)


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 0, 1]}, "ranking"),  # repeated index
        ({"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 1]}, "ranking"),  # too short
        ({"prompt": "p", "responses": ["a", "b"], "ranking": [1, 2]}, "ranking"),  # out of range
        ({"prompt": "p", "responses": ["a", "b"], "ranking": [True, False]}, "ranking"),  # bools are not ints
        ({"prompt": "p", "responses": ["a", "b"], "ranking": [0.0, 1.0]}, "ranking"),
        ({"prompt": "p", "responses": ["a", "b"], "ranking": "01"}, "ranking"),
        ({"prompt": "p", "responses": ["a", "b"]}, "ranking"),
        ({"prompt": "p", "responses": ["a"], "ranking": [0]}, "responses"),  # nothing to rank
        ({"prompt": "p", "responses": ["a", 2], "ranking": [0, 1]}, "responses"),
        ({"prompt": "p", "responses": "ab", "ranking": [0, 1]}, "responses"),
        ({"prompt": 5, "responses": ["a", "b"], "ranking": [0, 1]}, "prompt"),
    ],
)
def test_rankings_reject(tmp_path, bad, field):
    p = tmp_path / "r.jsonl"
    write_lines(p, [good_ranking(), good_ranking(), json.dumps(bad)])
    msg = expect_error(D.read_rankings, p, 3, field)
    assert "line 1" not in msg and "line 2" not in msg


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"prompt": "p", "chosen": "a"}, "rejected"),
        ({"prompt": "p", "chosen": ["a"], "rejected": "b"}, "chosen"),
        ({"chosen": "a", "rejected": "b"}, "prompt"),
    ],
)
def test_pairs_reject(tmp_path, bad, field):
    p = tmp_path / "p.jsonl"
    write_lines(p, [json.dumps(bad), good_pair()])
    expect_error(D.read_pairs, p, 1, field)


def test_invalid_utf8_rejected(tmp_path):
    p = tmp_path / "u.jsonl"
    write_lines(p, [good_pair(), good_pair(), b'{"prompt": "\xff\xfe", "chosen": "a", "rejected": "b"}'])
    expect_error(D.read_pairs, p, 3, "<line>")


def test_write_rejects_non_dicts(tmp_path):
    with pytest.raises(TypeError, match="record 1"):
        D.write_jsonl(tmp_path / "x.jsonl", [{"a": 1}, ["not", "a", "dict"]])
