"""Notebook 01, part 1: the GPT-2 tokenizer against tiktoken on a large, varied corpus.

Oracles (test-only dependencies):
* ids: a ``tiktoken.Encoding`` built from the course's own vocabulary file with tiktoken's
  GPT-2 split pattern and ``<|endoftext|>`` = 50256 (no network);
* pieces: the ``regex`` module (a tiktoken dependency) running GPT-2's original split pattern,
  exactly as OpenAI's ``encoder.py`` did, and tiktoken's rewritten pattern.
"""

from __future__ import annotations

import hashlib
import os
import random
import unicodedata

import oracles
import pytest
import torch

from helpers import checks, load_notebook
from helpers import vocab

NOTEBOOK = "notebooks/01_tokenizer_gpt2/01_tokenizer_gpt2.ipynb"
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
VOCAB_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
EOT = "<|endoftext|>"


# --------------------------------------------------------------------------- corpus

PROSE = (
    "The model reads tokens, not characters. Reinforcement learning from human feedback fine-tunes "
    "a pretrained language model so that its answers are preferred by people. First we collect "
    "demonstrations, then comparisons, then we optimise a policy against a learned reward model. "
    "It was the best of times, it was the worst of times; it was the age of wisdom... "
    "Colorless green ideas sleep furiously (or do they?). E-mail me at someone@example.com! "
    "The quick brown fox jumps over the lazy dog #42 & 100% of $3.50 -- really?!"
).split(" ")
CONTRACTION_STEMS = ["it", "don", "I", "we", "they", "you", "she", "He", "IT", "DON", "rock", "o", ""]
APOSTROPHES = ["'", "\u2019", "\u2018", "`", "\u02bc", "''"]
SUFFIXES = ["s", "t", "re", "ve", "m", "ll", "d", "S", "LL", "RE", "clock", "x", ""]
WHITESPACE = [" ", "  ", "\t", "\n", "\r\n", "\n\n", "\n\n\n", "\xa0", "\u3000", "\x0b", "\x0c", "\x85",
              "\u2028", "\u2009", "\u202f", " \t ", "\r"]
NOT_WHITESPACE = ["\x1c", "\x1d", "\x1e", "\x1f", "\u200b", "\u180e", "\ufeff", "\u2060"]  # look blank, are not \s
SCRIPTS = [
    "caf\u00e9 na\u00efve \u00c5ngstr\u00f6m \u0141\u00f3d\u017a stra\u00dfe \u0152uvre \u0130stanbul",
    "\u03b1\u03c1\u03c7\u03ae \u039b\u03cc\u03b3\u03bf\u03c2 \u1f00\u03b3\u03ac\u03c0\u03b7",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0401\u0436 \u0449\u0451\u0442\u043a\u0430",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \u6f22\u5b57 \u4f60\u597d\uff0c\u4e16\u754c\u3002 \ud55c\uad6d\uc5b4",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645 \u0627\u0644\u0639\u064e\u0631\u064e\u0628\u0650\u064a\u0651\u0629",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e \u0939\u093f\u0928\u094d\u0926\u0940",
    "\u05e9\u05c1\u05b8\u05dc\u05d5\u05b9\u05dd \u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35 \u10d2\u10d0\u10db\u10d0\u10e0\u10ef\u10dd\u10d1\u10d0",
    "\U0001d400\U0001d401 \U00020000\U0002a6d6 \U00010400\U00010428",
]
COMBINING = [chr(c) for c in range(0x0300, 0x0370)] + ["\u20dd", "\u0489", "\u093f", "\u0bcd"]
NUMERICS = ["0", "7", "12345", "3.14159", "1,000,000", "2024-06-25", "\u00b2", "\u00b3", "\u00b9", "\u00bd",
            "\u00bc", "\u216b", "\u2177", "\u2460", "\u3007", "\u0663\u0664", "\u096a", "\U0001d7d8", "\u2082"]
EMOJI = ["\U0001f44d", "\U0001f44d\U0001f3fd", "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466",
         "\U0001f3f3\ufe0f\u200d\U0001f308", "\U0001f1eb\U0001f1f7", "1\ufe0f\u20e3", "\u2764\ufe0f",
         "\U0001f9d1\u200d\U0001f52c", "\U0001f600\U0001f600\U0001f600"]
PUNCT = ["!", "?!", "...", "\u2026", "--", "\u2014", "\u00ab", "\u00bb", "\u201c", "\u201d", "\u00bf", "\u00a1",
         "(", ")", "[", "]{}", "<|", "|>", "<|endoftext", "endoftext|>", "<|endoftext|", "@#$%^&*", "\\", "/",
         "\u00a7", "\u00b6", "\u20ac", "\u00a5", "\u2192", "\u2211", "\u221e"]
CODE = [
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n",
    '{"key": [1, 2, 3], "nested": {"ok": true}}',
    "    \n        \n\t\t\n",
]


def _assigned(rng: random.Random, n: int) -> str:
    """n random code points that this Python's Unicode database knows (no Cn, no surrogates)."""
    out = []
    while len(out) < n:
        cp = rng.choice([rng.randrange(0x20, 0x3000), rng.randrange(0x3000, 0x10000), rng.randrange(0x10000, 0x30000)])
        ch = chr(cp)
        if unicodedata.category(ch) not in ("Cn", "Cs"):
            out.append(ch)
    return "".join(out)


def make_corpus(seed: int = 0, min_bytes: int = 110_000) -> str:
    """A deterministic, deliberately nasty mix of text of at least ``min_bytes`` UTF-8 bytes."""
    rng = random.Random(seed)

    def fragment() -> str:
        kind = rng.randrange(13)
        if kind <= 2:
            return " ".join(rng.choice(PROSE) for _ in range(rng.randint(3, 25)))
        if kind == 3:
            return rng.choice(CONTRACTION_STEMS) + rng.choice(APOSTROPHES) + rng.choice(SUFFIXES)
        if kind == 4:
            return "".join(rng.choice(WHITESPACE + NOT_WHITESPACE[:2]) for _ in range(rng.randint(1, 6)))
        if kind == 5:
            words = rng.choice(SCRIPTS).split(" ")
            return " ".join(rng.sample(words, rng.randint(1, len(words))))
        if kind == 6:
            return rng.choice("aeouAnyz\u03b1\u0438") + "".join(rng.choice(COMBINING) for _ in range(rng.randint(1, 3)))
        if kind == 7:
            return rng.choice(NUMERICS) + rng.choice(["", " ", "x", "%", "\u00b2"])
        if kind == 8:
            return rng.choice(EMOJI)
        if kind == 9:
            return "".join(rng.choice(PUNCT) for _ in range(rng.randint(1, 3)))
        if kind == 10:
            return rng.choice(CODE + [EOT, EOT, " " + EOT + " ", EOT + EOT, rng.choice(NOT_WHITESPACE)])
        if kind == 11:
            return _assigned(rng, rng.randint(1, 8))
        # long runs: many spaces or newlines, long numbers, long words
        return rng.choice([" " * rng.randint(5, 40), "\n" * rng.randint(3, 12), "9" * rng.randint(5, 30),
                           "ab" * rng.randint(5, 30), "=" * rng.randint(5, 30)])

    parts: list[str] = []
    size = 0
    while size < min_bytes:
        frag = fragment() + rng.choice(["", " ", " ", " ", "\n", "  ", "\t", ", ", ". "])
        parts.append(frag)
        size += len(frag.encode("utf-8"))
    return "".join(parts)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def nb():
    return load_notebook(NOTEBOOK)


@pytest.fixture(scope="module")
def ranks():
    return vocab.load_gpt2_ranks()


@pytest.fixture(scope="module")
def oracle():
    return oracles.gpt2_tiktoken()


@pytest.fixture(scope="module")
def corpus():
    text = make_corpus()
    unknown = sorted({hex(ord(c)) for c in text if unicodedata.category(c) in ("Cn", "Cs")})
    # Characters this Python's Unicode database does not know may be classified differently by a
    # newer regex engine; the corpus avoids them so that the comparison is exact.
    assert not unknown, f"corpus contains code points unknown to unicodedata: {unknown[:10]}"
    assert len(text.encode("utf-8")) >= 100_000
    return text


# --------------------------------------------------------------------------- vocabulary


def test_vocab_file_sha256_and_contents(ranks):
    digest = hashlib.sha256(vocab.VOCAB_PATH.read_bytes()).hexdigest()
    assert digest == VOCAB_SHA256
    assert vocab.VOCAB_SHA256 == VOCAB_SHA256
    assert (vocab.EOT_ID, vocab.EOT_TOKEN) == (50256, EOT)
    assert len(ranks) == 50256
    assert sorted(ranks.values()) == list(range(50256))
    assert {ranks[bytes([b])] for b in range(256)} == set(range(256)), "every byte must be a token"


def test_vocab_matches_tiktoken_parse(ranks):
    from tiktoken.load import load_tiktoken_bpe

    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""
    try:
        assert ranks == load_tiktoken_bpe(str(vocab.VOCAB_PATH))
    finally:
        if old is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old


def test_vocab_returns_independent_copies():
    a = vocab.load_gpt2_ranks()
    a[b"hello"] = -1
    assert vocab.load_gpt2_ranks()[b"hello"] != -1


def test_vocab_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        vocab.read_ranks(tmp_path / "missing.tiktoken")
    data = bytearray(vocab.VOCAB_PATH.read_bytes())
    data[100] ^= 1  # flip one bit
    bad = tmp_path / "corrupt.tiktoken"
    bad.write_bytes(bytes(data))
    with pytest.raises(vocab.VocabError, match="sha256"):
        vocab.read_ranks(bad)
    bad.write_bytes(b"SGVsbG8= 0\nnot-base64!! 1\n")
    with pytest.raises(vocab.VocabError, match="line 2"):
        vocab.read_ranks(bad, expected_sha256=None)


# --------------------------------------------------------------------------- pretokenize


def _first_diff(got: list, want: list) -> str:
    i = next((k for k, (g, w) in enumerate(zip(got, want)) if g != w), min(len(got), len(want)))
    return f"first difference at piece {i}: got {got[i:i + 3]!r}, expected {want[i:i + 3]!r}"


def test_char_classes_match_regex_module(nb):
    """LETTER / NUMBER / SPACE equal \\p{L} / \\p{N} / \\s for every code point unicodedata knows."""
    import re

    regex = pytest.importorskip("regex")
    known = "".join(
        chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) not in ("Cn", "Cs")
    )
    for name, body, prop in [("LETTER", nb.LETTER, r"\p{L}"), ("NUMBER", nb.NUMBER, r"\p{N}"), ("SPACE", nb.SPACE, r"\s")]:
        got = re.findall(f"[{body}]", known)
        want = regex.findall(prop, known)
        assert got == want, f"{name}: {_first_diff(got, want)}"


def test_pretokenize_matches_gpt2_regex(nb, corpus):
    regex = pytest.importorskip("regex")
    from tiktoken_ext.openai_public import r50k_pat_str

    want = regex.findall(GPT2_PATTERN, corpus)
    assert regex.findall(r50k_pat_str, corpus) == want, "oracle self-check: tiktoken's pattern differs from GPT-2's"
    got = nb.pretokenize(corpus)
    assert got == want, _first_diff(got, want)
    assert "".join(got) == corpus


@pytest.mark.parametrize(
    "text, pieces",
    [
        ("", []),
        ("Hello world", ["Hello", " world"]),
        ("a   b", ["a", "  ", " b"]),
        ("\x1c\x1fx", ["\x1c\x1f", "x"]),
        ("a\x85\x85b", ["a", "\x85", "\x85", "b"]),
        ("I'LL it's", ["I", "'", "LL", " it", "'s"]),
        ("x\u00b2\u00bd", ["x", "\u00b2\u00bd"]),
    ],
)
def test_pretokenize_small_cases(nb, text, pieces):
    checks.assert_equal(nb.pretokenize(text), pieces, name=f"pretokenize({text!r})")


# --------------------------------------------------------------------------- BPE / encode / decode


def test_bpe_merge_matches_tiktoken(nb, ranks, oracle, corpus):
    rng = random.Random(3)
    data = corpus.encode("utf-8")
    pieces = [bytes(rng.randrange(256) for _ in range(rng.randint(1, 16))) for _ in range(300)]
    pieces += [data[i : i + rng.randint(1, 24)] for i in (rng.randrange(len(data) - 30) for _ in range(500))]
    for piece in pieces:
        checks.assert_equal(nb.bpe_merge(piece, ranks), oracle._encode_single_piece(piece), name=f"bpe_merge({piece!r})")


def test_encode_matches_tiktoken(nb, ranks, oracle, corpus):
    want = oracle.encode(corpus, allowed_special={EOT})
    got = nb.encode(corpus, ranks)
    if got != want:
        regex = pytest.importorskip("regex")
        for chunk in corpus.split(EOT):
            for piece in regex.findall(GPT2_PATTERN, chunk):
                g, w = nb.encode(piece, ranks), oracle.encode_ordinary(piece)
                assert g == w, f"first diverging piece {piece!r}: got {g}, expected {w}"
        checks.assert_equal(got, want, name="encode(corpus)")
    assert got.count(50256) == corpus.count(EOT) > 0


def test_decode_matches_tiktoken_and_round_trips(nb, ranks, oracle, corpus):
    ids = oracle.encode(corpus, allowed_special={EOT})
    assert nb.decode(ids, ranks) == corpus
    assert nb.decode(nb.encode(corpus, ranks), ranks) == corpus
    assert nb.decode(torch.tensor(ids[:500]), ranks) == oracle.decode(ids[:500])
    rng = random.Random(11)
    for _ in range(200):  # cut anywhere: broken UTF-8 at the edges must be replaced exactly like tiktoken
        lo = rng.randrange(len(ids))
        cut = ids[lo : lo + rng.randint(1, 40)]
        checks.assert_equal(nb.decode(cut, ranks), oracle.decode(cut, errors="replace"), name=f"decode({cut})")


def test_round_trip_every_fragment_kind(nb, ranks):
    rng = random.Random(5)
    for seed in range(40):
        text = make_corpus(seed=seed, min_bytes=rng.randint(1, 400))
        checks.assert_equal(nb.decode(nb.encode(text, ranks), ranks), text, name=f"decode(encode(corpus seed {seed}))")


def test_ids_outside_the_vocabulary_raise(nb, ranks):
    """The one error the tokenizer's docstrings promise: decode of an id outside 0..50256."""
    for bad in [[50257], [-1], [15496, 10**9], torch.tensor([50300])]:
        with pytest.raises(ValueError):
            nb.decode(bad, ranks)
    assert nb.decode(torch.tensor([15496, 995], dtype=torch.int32), ranks) == "Hello world"


def test_encode_does_not_modify_ranks(nb, ranks):
    before = dict(ranks)
    nb.encode("Hello <|endoftext|> w\u00f6rld 123", ranks)
    nb.decode([1, 2, 50256], ranks)
    assert ranks == before
