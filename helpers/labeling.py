"""Label comparisons yourself: a ranking UI that appends to the course's rankings JSONL.

InstructGPT's labelers saw a prompt and K model outputs and ranked them from best to worst.
This module lets a person do the same in a notebook, and gives the simulated labelers the same
interface, so human and simulated rankings are interchangeable records::

    {"prompt": str, "responses": [str, ...], "ranking": [int, ...]}     # ranking best first

(:mod:`helpers.datasets`). Every submitted ranking is appended at once to a JSONL file with
:func:`helpers.datasets.append_ranking` (plus ``"labeler"`` and ``"source": "human"`` fields,
which the loaders ignore), so nothing is lost if the kernel dies halfway.

Three ways in
-------------
* :class:`RankingWidget` -- ipywidgets 8 (JupyterLab 4, Notebook 7, VS Code): the prompt, the K
  responses, a rank dropdown next to each (1 = best) and *Submit* / *Skip* buttons. Submitting
  needs every response to have a different rank; then the next item is shown.
* :func:`label_in_terminal` -- a text fallback: prints the responses numbered 1..K and asks
  with ``input()`` for the order, best first (``"2 1 3"``). Works in a terminal and in notebook
  front ends that support ``input()`` but not widgets.
* :func:`label_rankings` -- picks one of the above: the widget in a Jupyter kernel where
  ipywidgets imports, else the text prompt where standard input is interactive. It never
  blocks: under grading (:func:`helpers.runtime.is_grading`) or without an interactive stdin it
  prints a note and returns an empty list.

Human labels can then **join** the simulated ones (both kept) or **replace** them (for every
prompt a person ranked, the simulated record is dropped): :func:`merge_rankings`.
:func:`simulated_labeler` wraps :meth:`helpers.world.World.rank_responses` into the same
``labeler(prompt, responses) -> ranking`` form, reproducibly.
"""

from __future__ import annotations

import html
import random
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from helpers.datasets import append_ranking
from helpers.runtime import is_grading

__all__ = [
    "RankingWidget",
    "label_in_terminal",
    "label_rankings",
    "merge_rankings",
    "parse_ranking",
    "ranks_to_ranking",
    "simulated_labeler",
    "stdin_is_interactive",
    "widgets_available",
]

Labeler = Callable[[str, Sequence[str]], list[int]]


# ----------------------------------------------------------------------------- items


def _items(items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``[{"prompt", "responses"}]`` checked (other keys, e.g. a simulated ``ranking``, are ignored)."""
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "prompt" not in item or "responses" not in item:
            raise ValueError(f"item {i}: expected a dict with 'prompt' and 'responses', got {item!r:.80}")
        prompt, responses = item["prompt"], item["responses"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"item {i}: 'prompt' must be a non-empty string, got {prompt!r:.60}")
        if not isinstance(responses, (list, tuple)) or len(responses) < 2 or not all(isinstance(r, str) for r in responses):
            raise ValueError(f"item {i}: 'responses' must be a list of at least 2 strings, got {responses!r:.80}")
        out.append({"prompt": prompt, "responses": list(responses)})
    return out


def ranks_to_ranking(ranks: Sequence[int]) -> list[int]:
    """Ranks given per response (1 = best, one-based) -> the ranking (indices, best first).

    ``[2, 3, 1]`` (response 0 is second, 1 third, 2 best) -> ``[2, 0, 1]``. ValueError unless the
    ranks are exactly ``1..K`` in some order.
    """
    ranks = list(ranks)
    k = len(ranks)
    if any(isinstance(r, bool) or not isinstance(r, int) for r in ranks) or sorted(ranks) != list(range(1, k + 1)):
        raise ValueError(f"give every response a different rank from 1 to {k} (1 = best); got {ranks}")
    return sorted(range(k), key=lambda i: ranks[i])


def parse_ranking(text: str, k: int) -> list[int]:
    """Parse a typed order, best first, of responses numbered ``1..k``; returns 0-based indices.

    Accepts numbers separated by spaces, commas, ``>`` or ``-`` (``"2 1 3"``, ``"2,1,3"``,
    ``"2 > 1 > 3"``) and, for ``k <= 9``, the digits written together (``"213"``). The last
    response may be left out (``"2 1"`` for ``k = 3`` means 2, 1, then 3). Raises ValueError with
    a message meant for the person typing.
    """
    text = text.strip()
    parts = [p for p in re.split(r"[\s,;>\-]+", text) if p]
    if len(parts) == 1 and k <= 9 and parts[0].isdigit() and len(parts[0]) > 1:
        parts = list(parts[0])
    if not parts or not all(p.isdigit() for p in parts):
        raise ValueError(f"type the response numbers 1..{k}, best first, e.g. {' '.join(str(i) for i in range(k, 0, -1))!r}")
    order = [int(p) for p in parts]
    bad = [n for n in order if not 1 <= n <= k]
    if bad:
        raise ValueError(f"there are only responses 1..{k}; got {bad}")
    if len(set(order)) != len(order):
        raise ValueError(f"each response may appear once; got {order}")
    if len(order) == k - 1:
        order.append(next(n for n in range(1, k + 1) if n not in order))
    if len(order) != k:
        raise ValueError(f"rank all {k} responses (or all but the worst); got {len(order)}")
    return [n - 1 for n in order]


# ----------------------------------------------------------------------------- environment


def _kernel() -> Any:
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return None
    try:
        shell = ipython.get_ipython()
    except Exception:  # noqa: BLE001 - no shell at all
        return None
    return getattr(shell, "kernel", None) if shell is not None else None


def stdin_is_interactive() -> bool:
    """Can ``input()`` reach a person without blocking forever?

    In a Jupyter kernel: only if the front end allows stdin for this execution (nbclient and
    nbgrader do not). Elsewhere: only if ``sys.stdin`` is a terminal.
    """
    kernel = _kernel()
    if kernel is not None:
        return bool(getattr(kernel, "_allow_stdin", False))
    stdin = sys.stdin
    try:
        return stdin is not None and stdin.isatty()
    except (AttributeError, ValueError):  # closed or replaced stdin
        return False


def widgets_available() -> bool:
    """True in a Jupyter kernel where ``ipywidgets`` (8.x) imports."""
    if _kernel() is None:
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------- the widget


_CSS_RESPONSE = "white-space: pre-wrap; line-height: 1.4; padding: 2px 6px; border-left: 3px solid #bbb;"


class RankingWidget:
    """Rank the responses of each item with dropdowns (1 = best); Submit appends to ``path``.

    Attributes a program (or a test) can drive: ``rank_dropdowns`` (one ``Dropdown`` per response
    of the current item, value ``0`` = not ranked yet, else the rank), ``submit_button``,
    ``skip_button``, ``status`` (an ``HTML`` with the last message), ``index`` (current item),
    ``written`` (the records appended so far), ``done``. ``widget`` is the ``VBox`` to display;
    the object displays itself in Jupyter.
    """

    def __init__(self, items: Iterable[dict[str, Any]], path: str | Path, *, labeler: str = "human",
                 on_done: Callable[[list[dict[str, Any]]], None] | None = None) -> None:
        import ipywidgets as W

        self._W = W
        self.items = _items(items)
        self.path = Path(path)
        self.labeler = labeler
        self.on_done = on_done
        self.index = 0
        self.written: list[dict[str, Any]] = []
        self.rank_dropdowns: list[Any] = []
        self.header = W.HTML()
        self.prompt_html = W.HTML()
        self.rows = W.VBox()
        self.submit_button = W.Button(description="Submit ranking", button_style="success", icon="check")
        self.skip_button = W.Button(description="Skip", icon="forward")
        self.status = W.HTML()
        self.submit_button.on_click(self._on_submit)
        self.skip_button.on_click(self._on_skip)
        help_text = W.HTML("<i>Give each response a rank: 1 = best. Every rank once.</i>")
        self.widget = W.VBox([self.header, self.prompt_html, help_text, self.rows,
                              W.HBox([self.submit_button, self.skip_button]), self.status])
        self._show()

    @property
    def done(self) -> bool:
        return self.index >= len(self.items)

    def _show(self) -> None:
        W = self._W
        if self.done:
            self.header.value = (f"<b>Done:</b> {len(self.written)} ranking(s) of {len(self.items)} item(s) "
                                 f"appended to <code>{html.escape(str(self.path))}</code>.")
            self.prompt_html.value = ""
            self.rows.children = ()
            self.rank_dropdowns = []
            self.submit_button.disabled = self.skip_button.disabled = True
            if self.on_done is not None:
                self.on_done(self.written)
            return
        item = self.items[self.index]
        k = len(item["responses"])
        self.header.value = f"<b>Item {self.index + 1} of {len(self.items)}</b>"
        self.prompt_html.value = f"<b>Prompt:</b> {html.escape(item['prompt'])}"
        options = [("–", 0)] + [(str(r), r) for r in range(1, k + 1)]
        self.rank_dropdowns = [W.Dropdown(options=options, value=0, description="rank",
                                          layout=W.Layout(width="130px")) for _ in range(k)]
        rows = []
        for i, (dd, response) in enumerate(zip(self.rank_dropdowns, item["responses"])):
            text = html.escape(response) if response.strip() else "<i>(empty response)</i>"
            rows.append(W.HBox([dd, W.HTML(f"<div style='{_CSS_RESPONSE}'><b>{i + 1}.</b> {text}</div>",
                                           layout=W.Layout(width="auto"))]))
        self.rows.children = tuple(rows)
        self.submit_button.disabled = self.skip_button.disabled = False

    def current_ranks(self) -> list[int]:
        """The dropdown values of the current item (0 = not ranked yet)."""
        return [int(dd.value) for dd in self.rank_dropdowns]

    def _on_submit(self, _button: Any = None) -> None:
        if self.done:
            return
        item = self.items[self.index]
        try:
            ranking = ranks_to_ranking(self.current_ranks())
        except ValueError as err:
            self.status.value = f"<span style='color:#b00020'>Not saved: {html.escape(str(err))}.</span>"
            return
        record = append_ranking(self.path, item["prompt"], item["responses"], ranking,
                                labeler=self.labeler, source="human")
        self.written.append(record)
        self.status.value = (f"<span style='color:#1b5e20'>Saved item {self.index + 1}: best first "
                             f"{' ≻ '.join(str(i + 1) for i in ranking)}.</span>")
        self.index += 1
        self._show()

    def _on_skip(self, _button: Any = None) -> None:
        if self.done:
            return
        self.status.value = f"Skipped item {self.index + 1}."
        self.index += 1
        self._show()

    def rank(self, ranks: Sequence[int]) -> None:
        """Set the current item's dropdowns to ``ranks`` (1 = best) and press Submit."""
        for dd, r in zip(self.rank_dropdowns, ranks):
            dd.value = r
        self.submit_button.click()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


# ----------------------------------------------------------------------------- text fallback


def label_in_terminal(items: Iterable[dict[str, Any]], path: str | Path, *, labeler: str = "human",
                      input_fn: Callable[[str], str] = input, print_fn: Callable[..., None] = print,
                      max_tries: int = 3) -> list[dict[str, Any]]:
    """Rank each item by typing the response numbers, best first; each answer is appended to ``path``.

    Empty answer: skip the item. ``q``: stop. A malformed answer is explained and asked again,
    up to ``max_tries`` times, then the item is skipped. End of input (``EOFError``), Ctrl-C and a
    front end that refuses stdin stop the session quietly. Returns the records written.
    """
    items = _items(items)
    written: list[dict[str, Any]] = []
    for n, item in enumerate(items, start=1):
        k = len(item["responses"])
        print_fn(f"\n[{n}/{len(items)}] PROMPT: {item['prompt']}")
        for i, response in enumerate(item["responses"], start=1):
            print_fn(f"  {i}. {response if response.strip() else '(empty response)'}")
        for _ in range(max_tries):
            try:
                answer = input_fn(f"Order, best first (e.g. {' '.join(str(i) for i in range(k, 0, -1))}); "
                                  "Enter = skip, q = quit: ")
            except (EOFError, KeyboardInterrupt):
                print_fn("(input closed: stopping)")
                return written
            except Exception as err:  # noqa: BLE001 - e.g. StdinNotImplementedError in a kernel without stdin
                print_fn(f"(no interactive input: {type(err).__name__}; stopping)")
                return written
            answer = (answer or "").strip()
            if answer.lower() in ("q", "quit", "exit"):
                print_fn(f"stopped: {len(written)} ranking(s) written to {path}")
                return written
            if not answer:
                print_fn("skipped")
                break
            try:
                ranking = parse_ranking(answer, k)
            except ValueError as err:
                print_fn(f"  ! {err}")
                continue
            written.append(append_ranking(path, item["prompt"], item["responses"], ranking,
                                          labeler=labeler, source="human"))
            print_fn("  saved: " + " > ".join(str(i + 1) for i in ranking))
            break
        else:
            print_fn("  (too many tries: skipped)")
    print_fn(f"done: {len(written)} ranking(s) written to {path}")
    return written


# ----------------------------------------------------------------------------- entry point


def label_rankings(items: Iterable[dict[str, Any]], path: str | Path, *, labeler: str = "human",
                   mode: str = "auto", input_fn: Callable[[str], str] | None = None) -> RankingWidget | list[dict[str, Any]]:
    """Let a person rank ``items`` (``[{"prompt", "responses"}]``); rankings are appended to ``path``.

    ``mode``: ``"auto"`` (widget in a Jupyter kernel with ipywidgets, else the text prompt if stdin
    is interactive), ``"widget"`` or ``"text"``. Returns the displayed :class:`RankingWidget`
    (its ``written`` list fills as the person submits), or the records written by the text prompt.
    Never blocks where nobody can answer: under grading, or for the text prompt without an
    interactive stdin (and no ``input_fn``), it prints why and returns ``[]``.
    """
    if mode not in ("auto", "widget", "text"):
        raise ValueError(f"mode must be 'auto', 'widget' or 'text', got {mode!r}")
    items = _items(items)
    if is_grading():
        print("labeling UI skipped while grading (nobody is there to rank).")
        return []
    if mode == "widget" or (mode == "auto" and widgets_available()):
        ui = RankingWidget(items, path, labeler=labeler)
        if _kernel() is not None:
            from IPython.display import display

            display(ui.widget)
        return ui
    if input_fn is None:
        if not stdin_is_interactive():
            print("labeling UI skipped: no interactive input here (run it in Jupyter for the widget, "
                  "or in a terminal for the text prompt).")
            return []
        input_fn = input
    return label_in_terminal(items, path, labeler=labeler, input_fn=input_fn)


# ----------------------------------------------------------------------------- combining labels


def merge_rankings(simulated: Sequence[dict[str, Any]], human: Sequence[dict[str, Any]], how: str = "join") -> list[dict[str, Any]]:
    """Combine simulated and human rankings.

    ``how="join"``: all records, simulated first (a prompt ranked by both counts twice, as
    when several labelers rank the same prompt). ``how="replace"``: a person's word wins -- every
    simulated record whose prompt a person ranked is dropped, then the human records follow.
    Returns a new list (the records themselves are not copied).
    """
    if how not in ("join", "replace"):
        raise ValueError(f"how must be 'join' or 'replace', got {how!r}")
    if how == "join":
        return list(simulated) + list(human)
    ranked_by_people = {r["prompt"] for r in human}
    return [r for r in simulated if r["prompt"] not in ranked_by_people] + list(human)


def simulated_labeler(world: Any, noise: float | None = None, seed: int = 0) -> Labeler:
    """``labeler(prompt, responses) -> ranking`` by the world's simulated labelers (best first).

    Plackett-Luce on gold scores with temperature ``noise`` (default
    :data:`helpers.world.DEFAULT_LABELER_NOISE`), see :meth:`helpers.world.World.rank_responses`.
    Reproducible: the randomness of each call comes from ``(world.seed, seed, prompt)`` only, so a
    prompt gets the same ranking whatever was ranked before; another ``seed`` is another labeler.
    """
    from helpers.world import DEFAULT_LABELER_NOISE

    tau = DEFAULT_LABELER_NOISE if noise is None else float(noise)

    def labeler(prompt: str, responses: Sequence[str]) -> list[int]:
        rng = random.Random(f"labeler|{world.seed}|{seed}|{prompt}")
        return world.rank_responses(prompt, list(responses), rng, tau)

    return labeler
