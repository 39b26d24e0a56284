"""helpers.labeling: the ranking widget driven programmatically, the text fallback with a fake input(),
the non-blocking rules, merging human and simulated labels, and the simulated labeler."""

from __future__ import annotations

import io
import random
import sys
import types

import pytest

from helpers import labeling
from helpers.datasets import read_rankings
from helpers.world import World

ITEMS = [
    {"prompt": "describe the fox.", "responses": ["the fox is red.", "a fox.", "foxes live in the woods."], "ranking": [0, 1, 2]},
    {"prompt": "what colour is the cup?", "responses": ["the cup is blue.", "blue <b>&</b> 'quoted'"]},
]


def never_called(*_args, **_kwargs):
    raise AssertionError("input() must not be called here")


@pytest.fixture
def not_grading(monkeypatch):
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)


# ----------------------------------------------------------------------------- small parts


def test_ranks_to_ranking_is_an_argsort():
    rng = random.Random(0)
    for _ in range(200):
        k = rng.randint(2, 8)
        ranks = list(range(1, k + 1))
        rng.shuffle(ranks)
        ranking = labeling.ranks_to_ranking(ranks)
        # oracle: position p of the ranking holds the response whose rank is p + 1
        assert ranking == [ranks.index(p + 1) for p in range(k)]
    for bad in ([1, 1, 2], [0, 1, 2], [1, 2, 4], [True, 2]):
        with pytest.raises(ValueError):
            labeling.ranks_to_ranking(bad)


@pytest.mark.parametrize("text,k,expected", [
    ("2 1 3", 3, [1, 0, 2]), ("2,1,3", 3, [1, 0, 2]), ("2 > 1 > 3", 3, [1, 0, 2]), ("213", 3, [1, 0, 2]),
    ("2 1", 3, [1, 0, 2]), ("  4 3 2 1 ", 4, [3, 2, 1, 0]), ("10 1 2 3 4 5 6 7 8 9", 10, [9, 0, 1, 2, 3, 4, 5, 6, 7, 8]),
])
def test_parse_ranking_accepts_common_forms(text, k, expected):
    assert labeling.parse_ranking(text, k) == expected


@pytest.mark.parametrize("text", ["", "a b c", "1 1 2", "0 1 2", "1 2 4", "1", "1 2 3 3"])
def test_parse_ranking_rejects_malformed_answers(text):
    with pytest.raises(ValueError):
        labeling.parse_ranking(text, 3)


# ----------------------------------------------------------------------------- the widget


def click(button) -> None:
    button._click_handlers(button)  # what the front end triggers


def test_widget_submit_writes_rankings_and_advances(tmp_path):
    pytest.importorskip("ipywidgets")
    path = tmp_path / "human.jsonl"
    done = []
    ui = labeling.RankingWidget(ITEMS, path, labeler="ana", on_done=done.append)
    assert len(ui.rank_dropdowns) == 3 and ui.index == 0 and not ui.done
    assert "describe the fox." in ui.prompt_html.value
    # incomplete ranks: nothing written, same item, a message
    ui.rank_dropdowns[0].value = 2
    click(ui.submit_button)
    assert not path.exists() and ui.index == 0 and "Not saved" in ui.status.value
    # a repeated rank is refused too
    for dd, r in zip(ui.rank_dropdowns, (2, 2, 1)):
        dd.value = r
    ui.submit_button.click()
    assert not path.exists() and ui.index == 0
    # a valid ranking: response 2 best, then 0, then 1
    for dd, r in zip(ui.rank_dropdowns, (2, 3, 1)):
        dd.value = r
    ui.submit_button.click()
    assert ui.index == 1 and len(ui.rank_dropdowns) == 2
    records = read_rankings(path)
    assert records == [{"prompt": "describe the fox.", "responses": ITEMS[0]["responses"], "ranking": [2, 0, 1]}]
    assert '"labeler": "ana"' in path.read_text() and '"source": "human"' in path.read_text()
    # the response text is escaped in the HTML (no markup injection)
    html_text = " ".join(row.children[1].value for row in ui.rows.children)
    assert "&lt;b&gt;&amp;&lt;/b&gt;" in html_text
    ui.rank([2, 1])  # the helper: set and submit
    assert ui.done and ui.submit_button.disabled and ui.skip_button.disabled
    assert read_rankings(path)[1]["ranking"] == [1, 0]
    assert done == [ui.written] and len(ui.written) == 2
    click(ui.submit_button)  # after the end: nothing happens
    assert len(read_rankings(path)) == 2


def test_widget_skip_and_append_to_existing_file(tmp_path):
    pytest.importorskip("ipywidgets")
    path = tmp_path / "human.jsonl"
    path.write_text('{"prompt": "old", "responses": ["x", "y"], "ranking": [1, 0]}')  # no final newline
    ui = labeling.RankingWidget(ITEMS, path)
    click(ui.skip_button)
    assert ui.index == 1 and "Skipped" in ui.status.value
    ui.rank([1, 2])
    assert ui.done
    records = read_rankings(path)
    assert [r["prompt"] for r in records] == ["old", "what colour is the cup?"] and records[1]["ranking"] == [0, 1]


def test_widget_rejects_bad_items(tmp_path):
    pytest.importorskip("ipywidgets")
    for bad in ([{"prompt": "p", "responses": ["only one"]}], [{"prompt": " ", "responses": ["a", "b"]}], [{"responses": ["a", "b"]}]):
        with pytest.raises(ValueError):
            labeling.RankingWidget(bad, tmp_path / "x.jsonl")


# ----------------------------------------------------------------------------- text fallback


def scripted(answers):
    it = iter(answers)

    def fake_input(prompt=""):
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None

    return fake_input


def test_text_fallback_with_retries_skips_and_quit(tmp_path):
    path = tmp_path / "human.jsonl"
    printed = []
    written = labeling.label_in_terminal(ITEMS * 2, path, labeler="bo", input_fn=scripted(["3 x", "3 1", "", "2 1", "q"]),
                                         print_fn=lambda *a: printed.append(" ".join(map(str, a))))
    # item 1: a bad answer, then "3 1" (= 3, 1, 2); item 2: skipped; item 3: "2 1"; item 4: quit
    assert [r["ranking"] for r in written] == [[2, 0, 1], [1, 0, 2]]
    assert read_rankings(path) == [{k: r[k] for k in ("prompt", "responses", "ranking")} for r in written]
    assert any("!" in line for line in printed) and any("skipped" in line for line in printed)


def test_text_fallback_stops_on_end_of_input_and_too_many_tries(tmp_path):
    path = tmp_path / "human.jsonl"
    written = labeling.label_in_terminal(ITEMS, path, input_fn=scripted(["9", "9", "9"]), print_fn=lambda *a: None)
    assert written == [] and not path.exists()  # three bad answers skip item 1; then input ends


def test_label_rankings_text_mode_with_monkeypatched_input(tmp_path, monkeypatch, not_grading):
    path = tmp_path / "human.jsonl"
    monkeypatch.setattr(labeling, "stdin_is_interactive", lambda: True)
    monkeypatch.setattr("builtins.input", scripted(["1 2 3", "2 1"]))
    written = labeling.label_rankings(ITEMS, path, mode="text")
    assert [r["ranking"] for r in written] == [[0, 1, 2], [1, 0]]


# ----------------------------------------------------------------------------- never blocks


def test_label_rankings_does_not_block_while_grading(tmp_path, monkeypatch):
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    monkeypatch.setattr("builtins.input", never_called)
    monkeypatch.setattr(labeling, "stdin_is_interactive", lambda: True)
    for mode in ("auto", "text", "widget"):
        assert labeling.label_rankings(ITEMS, tmp_path / "h.jsonl", mode=mode) == []
    assert not (tmp_path / "h.jsonl").exists()


def test_label_rankings_does_not_block_without_interactive_stdin(tmp_path, monkeypatch, not_grading, capsys):
    monkeypatch.setattr("builtins.input", never_called)
    monkeypatch.setattr(sys, "stdin", io.StringIO("1 2 3\n"))  # not a terminal
    assert labeling.stdin_is_interactive() is False
    assert labeling.label_rankings(ITEMS, tmp_path / "h.jsonl") == []  # auto: no kernel here, no tty
    assert labeling.label_rankings(ITEMS, tmp_path / "h.jsonl", mode="text") == []
    assert "skipped" in capsys.readouterr().out


def test_stdin_rules_in_a_kernel(monkeypatch):
    """In a Jupyter kernel, input() is usable only when the front end allows stdin (nbclient does not)."""
    kernel = types.SimpleNamespace(_allow_stdin=False)
    shell = types.SimpleNamespace(kernel=kernel)
    fake_ipython = types.ModuleType("IPython")
    fake_ipython.get_ipython = lambda: shell
    monkeypatch.setitem(sys.modules, "IPython", fake_ipython)
    assert labeling.stdin_is_interactive() is False
    kernel._allow_stdin = True
    assert labeling.stdin_is_interactive() is True


def test_label_rankings_widget_mode_returns_the_widget(tmp_path, not_grading):
    pytest.importorskip("ipywidgets")
    ui = labeling.label_rankings(ITEMS, tmp_path / "h.jsonl", mode="widget")
    assert isinstance(ui, labeling.RankingWidget)
    ui.rank([1, 2, 3])
    assert read_rankings(tmp_path / "h.jsonl")[0]["ranking"] == [0, 1, 2]


# ----------------------------------------------------------------------------- combining and simulating


def test_merge_rankings_join_and_replace():
    sim = [{"prompt": "a", "responses": ["1", "2"], "ranking": [0, 1]},
           {"prompt": "b", "responses": ["1", "2"], "ranking": [0, 1]}]
    human = [{"prompt": "b", "responses": ["1", "2"], "ranking": [1, 0]},
             {"prompt": "c", "responses": ["1", "2"], "ranking": [1, 0]}]
    assert labeling.merge_rankings(sim, human, "join") == sim + human
    assert labeling.merge_rankings(sim, human, "replace") == [sim[0]] + human
    assert labeling.merge_rankings(sim, [], "replace") == sim
    with pytest.raises(ValueError):
        labeling.merge_rankings(sim, human, "mix")


def test_simulated_labeler_is_reproducible_and_follows_gold_without_noise():
    world = World(0)
    rng = random.Random(1)
    for prompt in world.prompts("train")[:20]:
        responses = world.sample_responses(prompt, 5, rng)
        gold = [world.gold_score(prompt, r) for r in responses]
        exact = labeling.simulated_labeler(world, noise=0.0)(prompt, responses)
        assert exact == sorted(range(5), key=lambda i: (-gold[i], i))
        noisy = labeling.simulated_labeler(world, seed=3)
        first = noisy(prompt, responses)
        assert sorted(first) == list(range(5))
        noisy(world.prompts("train")[0], responses)  # another call in between changes nothing
        assert noisy(prompt, responses) == first
