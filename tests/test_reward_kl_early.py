"""The reward-KL figures of notebooks 01-03, run tiny (as grading runs them): each demo writes its numbers.

01: gold against the KL of sampling at temperature T; 02: gold against KL(SFT || default model) during SFT;
03: best-of-n judged by gold against the analytic KL log n - (n - 1)/n (``helpers.reward_kl``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from autograder.demo import execute_notebook
from helpers.reward_kl import best_of_n_kl

ROOT = Path(__file__).resolve().parent.parent


def run_tiny(nb_id: str, out: Path) -> dict:
    """Execute the notebook in its grading configuration; return its reward_kl.json."""
    res = execute_notebook(ROOT / "notebooks" / nb_id / f"{nb_id}.ipynb", out, tiny=True, cell_timeout=120,
                           progress=False)
    assert res.error is None, res.error
    path = out / nb_id / "reward_kl.json"
    assert path.is_file(), f"{nb_id}'s demo wrote no {path.name}"
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["notebook"] == nb_id
    return data


def assert_finite_floats(values: list, length: int, what: str) -> None:
    assert len(values) == length, f"{what}: {len(values)} values, expected {length}"
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in values), f"{what}: {values}"


def strictly_increasing(values: list) -> bool:
    return all(b > a for a, b in zip(values, values[1:]))


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("demo")


def test_01_temperature_against_gold(out):
    data = run_tiny("01_tokenizer_gpt2", out)
    assert (out / "plots" / "01_tokenizer_gpt2" / "01_temperature_reward_kl.png").is_file()
    temps, kl = data["temperature"], data["kl"]
    assert temps[0] == 0.3 and temps[-1] == 1.5 and strictly_increasing(temps) and 1.0 in temps
    for key in ("kl", "gold", "kl_per_response"):
        assert_finite_floats(data[key], len(temps), key)
    one = temps.index(1.0)
    assert 0 < one < len(temps) - 1, "need temperatures on both sides of 1"
    assert kl[one] == 0.0 and data["kl_per_response"][one] == 0.0
    # KL grows as |log T| grows, on each side of T = 1.
    assert strictly_increasing(kl[one::-1]), f"KL must fall as T rises towards 1: {kl[:one + 1]}"
    assert strictly_increasing(kl[one:]), f"KL must rise with T above 1: {kl[one:]}"
    assert all(r >= k for r, k in zip(data["kl_per_response"], kl))  # a response has at least one token


def test_02_sft_spends_kl(out):
    data = run_tiny("02_sft", out)
    assert (out / "plots" / "02_sft" / "02_sft_reward_kl.png").is_file()
    steps = data["step"]
    assert steps[0] == 0 and strictly_increasing(steps) and len(steps) >= 3
    for key in ("kl", "gold", "kl_per_token", "gold_sem"):
        assert_finite_floats(data[key], len(steps), key)
    assert abs(data["kl"][0]) < 1e-6, "before the first step the SFT model is the default model"
    assert all(k >= -1e-6 for k in data["kl"]) and data["kl"][-1] > 0


def test_03_best_of_n_judged_by_gold(out):
    data = run_tiny("03_preference_data", out)
    assert (out / "plots" / "03_preference_data" / "03_best_of_n_gold.png").is_file()
    n, kl, gold = data["n"], data["kl"], data["gold"]
    assert n[0] == 1 and strictly_increasing(n) and n[-1] == data["samples_per_prompt"]
    assert kl[0] == 0.0 and strictly_increasing(kl)
    assert kl == pytest.approx([best_of_n_kl(v) for v in n])
    assert_finite_floats(gold, len(n), "gold")
    assert all(b >= a - 1e-9 for a, b in zip(gold, gold[1:])), "gold judging its own pick can only rise"
