"""Test-only oracles shared by several test files (outside libraries, never the code under test)."""

from __future__ import annotations

import functools
import os

import pytest

from helpers import vocab


@functools.cache
def gpt2_tiktoken():
    """tiktoken's GPT-2 encoding built from the course's own vocabulary file (no network)."""
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe
    from tiktoken_ext.openai_public import r50k_pat_str

    # TIKTOKEN_CACHE_DIR="" makes tiktoken read the local file directly (no copy in a temp cache).
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""
    try:
        mergeable = load_tiktoken_bpe(str(vocab.VOCAB_PATH), expected_hash=vocab.VOCAB_SHA256)
    finally:
        if old is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old
    return tiktoken.Encoding(
        name="gpt2_course_local",
        pat_str=r50k_pat_str,  # what tiktoken's own "gpt2" encoding uses
        mergeable_ranks=mergeable,
        special_tokens={vocab.EOT_TOKEN: vocab.EOT_ID},
        explicit_n_vocab=50257,
    )
