"""GPT-2's byte-level BPE vocabulary, shipped with the course.

``helpers/data/gpt2.tiktoken`` holds GPT-2's 50,256 mergeable tokens, one per line as
``base64(token_bytes) rank``; the rank is both the token id and the merge priority
(lower merges first). The 50,257th token, ``<|endoftext|>`` (id 50256), is a special
token and is not in the file.

Provenance: the file was taken unchanged from the openai-whisper 20250625 sdist
(``whisper/assets/gpt2.tiktoken``). It is byte-identical to OpenAI's
``r50k_base.tiktoken`` (the file tiktoken downloads for its ``gpt2``/``r50k_base``
encodings; tiktoken checks it against the same sha256 as :data:`VOCAB_SHA256`), so no
network access is needed to tokenize exactly like GPT-2.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path

VOCAB_PATH = Path(__file__).resolve().parent / "data" / "gpt2.tiktoken"
VOCAB_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
N_MERGEABLE = 50256  # ranks 0..50255 in the file

EOT_ID = 50256
EOT_TOKEN = "<|endoftext|>"

_cache: dict[bytes, int] | None = None


class VocabError(RuntimeError):
    """The vocabulary file is corrupt (wrong checksum or malformed)."""


def read_ranks(path: str | Path = VOCAB_PATH, expected_sha256: str | None = VOCAB_SHA256) -> dict[bytes, int]:
    """Parse a ``.tiktoken`` file into ``{token_bytes: rank}``, verifying its sha256 first.

    Raises ``FileNotFoundError`` if the file is missing and :class:`VocabError` if its
    checksum or contents are wrong. Pass ``expected_sha256=None`` to skip the checksum.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"GPT-2 vocabulary not found at {path}. It ships with the course in helpers/data/; "
            "restore it from the course repository (or the release folder you were given)."
        )
    data = path.read_bytes()
    if expected_sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected_sha256:
            raise VocabError(
                f"GPT-2 vocabulary {path} is corrupt: sha256 {digest}, expected {expected_sha256}. "
                "Restore the file from the course repository."
            )
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), start=1):
        if not line:
            continue
        try:
            token_b64, rank = line.split()
            ranks[base64.b64decode(token_b64, validate=True)] = int(rank)
        except (ValueError, binascii.Error) as exc:
            raise VocabError(f"{path}, line {lineno}: expected 'base64 rank', got {line[:60]!r}") from exc
    if expected_sha256 == VOCAB_SHA256 and sorted(ranks.values()) != list(range(N_MERGEABLE)):
        raise VocabError(f"{path}: ranks are not exactly 0..{N_MERGEABLE - 1}")
    return ranks


def load_gpt2_ranks() -> dict[bytes, int]:
    """GPT-2's ``{token_bytes: rank}`` (50,256 entries; ``<|endoftext|>`` = 50256 is not included).

    The file is read and checked once per process; every call returns a fresh copy, so a
    caller that modifies its dict cannot corrupt anyone else's.
    """
    global _cache
    if _cache is None:
        _cache = read_ranks(VOCAB_PATH)
    return dict(_cache)
