"""Write ``helpers/data/labeling_samples.json``: the samples notebook 03's labeling UI shows by default.

    .venv/bin/python -m builders.labeling_samples

Five validation prompts of the course's comparison data set (notebook 03's reference code sampled them from the
SFT model), with their distinct responses and without the simulated labeler's ranking: the student ranks them in
notebook 03 before their own sampling code exists. Shipped as data, so the release needs no sampling code.
"""

from __future__ import annotations

import json

from helpers.samples import LABELING_SAMPLES
from helpers.preference_pipeline import load_comparisons

N_PROMPTS = 5


def main() -> None:
    rankings = load_comparisons(tiny=False)["rankings"]["val"]
    records = [{"prompt": r["prompt"], "responses": r["responses"]} for r in rankings[:N_PROMPTS]]
    LABELING_SAMPLES.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {len(records)} prompts to {LABELING_SAMPLES}")


if __name__ == "__main__":
    main()
