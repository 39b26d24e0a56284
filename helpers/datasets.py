"""JSONL files of the course's human-feedback data, with loaders that say exactly what is wrong.

One JSON object per line (UTF-8). Three kinds of record:

* **demonstrations** (SFT): ``{"prompt": str, "response": str}``
* **rankings** (what a labeler returns for K responses to one prompt):
  ``{"prompt": str, "responses": [str, ...], "ranking": [int, ...]}`` with K >= 2 and
  ``ranking`` a permutation of ``range(K)`` listing response indices **best first**:
  ``ranking[0]`` is the index of the best response, ``ranking[-1]`` of the worst.
  (Example: ``"ranking": [2, 0, 1]`` means responses[2] ≻ responses[0] ≻ responses[1].)
* **pairs** (reward-model comparisons): ``{"prompt": str, "chosen": str, "rejected": str}``

Loader rules (``read_demonstrations``, ``read_rankings``, ``read_pairs``):

* every required field must be present with the right type (strings are ``str``; ranking
  entries ``int``, never ``bool``); ``prompt`` must not be blank; responses may be empty;
* **unknown fields are tolerated and dropped** (an export of Anthropic HH-RLHF, a labeling
  tool's ``"labeler"``, ``"time"`` or ``"id"`` fields...): loaders return dicts holding exactly
  the fields above, in that order;
* blank lines are skipped (line numbers still count them);
* anything else raises ``ValueError("{path}, line {n}, field '{field}': ...")`` naming the
  file, the 1-based line number and the field (``field '<line>'`` for a line that is not a
  JSON object).

Real data: Anthropic HH-RLHF stores ``{"chosen": dialogue, "rejected": dialogue}`` where both
dialogues share the prompt. :func:`hh_rlhf_to_pair` splits such a record at the last
``"\\n\\nAssistant:"`` into the pair format, so an instructor's converted export loads with
:func:`read_pairs` like the simulated data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator

__all__ = [
    "append_jsonl",
    "append_ranking",
    "hh_rlhf_to_pair",
    "iter_jsonl",
    "read_demonstrations",
    "read_pairs",
    "read_rankings",
    "validate_demonstration",
    "validate_pair",
    "validate_ranking",
    "write_jsonl",
]

DEMONSTRATION_FIELDS = ("prompt", "response")
RANKING_FIELDS = ("prompt", "responses", "ranking")
PAIR_FIELDS = ("prompt", "chosen", "rejected")


class _FieldError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Any) -> str:
    return type(value).__name__


# ----------------------------------------------------------------------------- validation


def _require_str(record: dict, field: str, *, non_blank: bool = False) -> str:
    if field not in record:
        raise _FieldError(field, f"missing (a record needs {field!r})")
    value = record[field]
    if not isinstance(value, str):
        raise _FieldError(field, f"expected a string, got {_type_name(value)} {_short(value)}")
    if non_blank and not value.strip():
        raise _FieldError(field, "must not be empty")
    return value


def _check_object(record: Any) -> dict:
    if not isinstance(record, dict):
        raise _FieldError("<line>", f"expected a JSON object, got {_type_name(record)} {_short(record)}")
    return record


def validate_demonstration(record: Any) -> dict[str, str]:
    """``{"prompt", "response"}`` from ``record`` (unknown fields dropped); ValueError naming the field."""
    record = _check_object(record)
    return {"prompt": _require_str(record, "prompt", non_blank=True),
            "response": _require_str(record, "response")}


def validate_pair(record: Any) -> dict[str, str]:
    """``{"prompt", "chosen", "rejected"}`` from ``record`` (unknown fields dropped)."""
    record = _check_object(record)
    return {"prompt": _require_str(record, "prompt", non_blank=True),
            "chosen": _require_str(record, "chosen"),
            "rejected": _require_str(record, "rejected")}


def validate_ranking(record: Any) -> dict[str, Any]:
    """``{"prompt", "responses", "ranking"}`` from ``record``; ``ranking`` must permute ``range(K)``."""
    record = _check_object(record)
    prompt = _require_str(record, "prompt", non_blank=True)
    if "responses" not in record:
        raise _FieldError("responses", "missing (a record needs 'responses')")
    responses = record["responses"]
    if not isinstance(responses, list):
        raise _FieldError("responses", f"expected a list of strings, got {_type_name(responses)} {_short(responses)}")
    if len(responses) < 2:
        raise _FieldError("responses", f"expected at least 2 responses to rank, got {len(responses)}")
    for i, r in enumerate(responses):
        if not isinstance(r, str):
            raise _FieldError("responses", f"entry {i}: expected a string, got {_type_name(r)} {_short(r)}")
    if "ranking" not in record:
        raise _FieldError("ranking", "missing (a record needs 'ranking')")
    ranking = record["ranking"]
    k = len(responses)
    if not isinstance(ranking, list):
        raise _FieldError("ranking", f"expected a list of ints, got {_type_name(ranking)} {_short(ranking)}")
    for i, r in enumerate(ranking):
        if not isinstance(r, int) or isinstance(r, bool):
            raise _FieldError("ranking", f"entry {i}: expected an int, got {_type_name(r)} {_short(r)}")
    if sorted(ranking) != list(range(k)):
        raise _FieldError("ranking", f"expected a permutation of 0..{k - 1} (best first, one entry per "
                                     f"response), got {_short(ranking)}")
    return {"prompt": prompt, "responses": list(responses), "ranking": list(ranking)}


# ----------------------------------------------------------------------------- reading


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """``(line_number, parsed_json)`` for every non-blank line; ValueError on bad UTF-8 or JSON."""
    path = Path(path)
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{path}, line {lineno}, field '<line>': not valid UTF-8 ({exc.reason})") from None
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {lineno}, field '<line>': invalid JSON ({exc.msg} at "
                                 f"column {exc.colno}): {line.strip()[:60]!r}") from None


def _read(path: str | Path, validate) -> list[dict]:
    out = []
    for lineno, record in iter_jsonl(path):
        try:
            out.append(validate(record))
        except _FieldError as err:
            raise ValueError(f"{path}, line {lineno}, field '{err.field}': {err.message}") from None
    return out


def read_demonstrations(path: str | Path) -> list[dict[str, str]]:
    """Demonstrations ``[{"prompt", "response"}]`` from a JSONL file (see the module docstring)."""
    return _read(path, validate_demonstration)


def read_rankings(path: str | Path) -> list[dict[str, Any]]:
    """Rankings ``[{"prompt", "responses", "ranking"}]`` (ranking best first) from a JSONL file."""
    return _read(path, validate_ranking)


def read_pairs(path: str | Path) -> list[dict[str, str]]:
    """Comparison pairs ``[{"prompt", "chosen", "rejected"}]`` from a JSONL file."""
    return _read(path, validate_pair)


# ----------------------------------------------------------------------------- writing


def _dumps(record: Any, index: int) -> str:
    if not isinstance(record, dict):
        raise TypeError(f"record {index}: expected a dict, got {_type_name(record)}")
    return json.dumps(record, ensure_ascii=False)


def write_jsonl(path: str | Path, records: Iterable[dict], *, append: bool = False) -> int:
    """Write ``records`` one JSON object per line (UTF-8); ``append=True`` adds to the file's end.

    Returns the number of records written. Records are written as given (not validated);
    validate with ``validate_*`` first when the data come from outside.
    """
    path = Path(path)
    lines = [_dumps(r, i) + "\n" for i, r in enumerate(records)]
    n_records = len(lines)
    if append and path.exists() and path.stat().st_size > 0:
        with open(path, "rb") as fh:  # a file cut after its last record: start on a new line
            fh.seek(-1, 2)
            if fh.read(1) != b"\n":
                lines.insert(0, "\n")
    with open(path, "a" if append else "w", encoding="utf-8") as fh:
        fh.writelines(lines)
    return n_records


def append_jsonl(path: str | Path, records: Iterable[dict]) -> int:
    """``write_jsonl(path, records, append=True)``."""
    return write_jsonl(path, records, append=True)


def append_ranking(path: str | Path, prompt: str, responses: list[str], ranking: list[int], **extra: Any) -> dict:
    """Validate one ranking and append it as a line to ``path`` (what the labeling UI calls).

    ``extra`` fields (e.g. ``labeler="ana"``) are stored too; :func:`read_rankings` ignores them.
    Returns the record written. Raises ValueError (naming the field) before writing anything if
    the ranking is malformed.
    """
    record = {"prompt": prompt, "responses": responses, "ranking": ranking}
    try:
        validate_ranking(record)
    except _FieldError as err:
        raise ValueError(f"ranking not appended to {path}, field '{err.field}': {err.message}") from None
    record.update(extra)
    write_jsonl(path, [record], append=True)
    return record


# ----------------------------------------------------------------------------- real data

HH_ASSISTANT = "\n\nAssistant:"


def hh_rlhf_to_pair(record: dict) -> dict[str, str]:
    """Convert an Anthropic HH-RLHF record ``{"chosen": dialogue, "rejected": dialogue}`` to a pair.

    Both dialogues share everything up to the last ``"\\n\\nAssistant:"``; that prefix
    (with the marker) is the prompt, the rest of each dialogue its response (stripped).
    Raises ValueError if a dialogue has no assistant turn or the prefixes differ.
    """
    out = {}
    prompts = []
    for key in ("chosen", "rejected"):
        text = record.get(key)
        if not isinstance(text, str):
            raise ValueError(f"field {key!r}: expected a string dialogue, got {_type_name(text)}")
        cut = text.rfind(HH_ASSISTANT)
        if cut < 0:
            raise ValueError(f"field {key!r}: no {HH_ASSISTANT!r} turn in {_short(text)}")
        prompts.append(text[: cut + len(HH_ASSISTANT)])
        out[key] = text[cut + len(HH_ASSISTANT):].strip()
    if prompts[0] != prompts[1]:
        raise ValueError("field 'rejected': its dialogue before the last assistant turn differs from 'chosen'")
    return {"prompt": prompts[0], "chosen": out["chosen"], "rejected": out["rejected"]}
