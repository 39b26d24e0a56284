"""Data shipped with the course for demos that run before the student's own code exists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Written by builders/labeling_samples.py from the course's comparison data (SFT samples, no ranking).
LABELING_SAMPLES = Path(__file__).resolve().parent / "data" / "labeling_samples.json"


def labeling_samples() -> list[dict[str, Any]]:
    """``[{"prompt", "responses"}]``: SFT samples of five validation prompts, to rank in notebook 03 before you sample."""
    return json.loads(LABELING_SAMPLES.read_text(encoding="utf-8"))
