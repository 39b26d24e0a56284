"""What a student receives holds no solution: released code against graded solutions, by AST.

Release k ships ``helpers/`` (every release carries all of it) and the ``minirlhf`` modules of
notebooks 1..k-1 (``helpers.export``). None of that code may paraphrase a graded solution of
notebook k or later: ``helpers/`` is compared with the solutions of every notebook, the module of
notebook j with the solutions of notebooks after j. Three checks, on ASTs normalised the same way
(docstrings, annotations and input validation -- ``if ...: raise``, ``assert`` -- dropped; every
variable and argument renamed ``v0, v1, ...`` in order of first use; numbers made one placeholder):

1. **shared subtrees**: no statement or expression of at least :data:`MIN_NODES` nodes of a graded
   solution occurs in released code (:data:`IDIOMS` lists the generic ones that may);
2. **near copies**: no released function's node sequence is :data:`SIMILAR` alike or more to a
   graded function's body (``difflib`` ratio; both at least :data:`MIN_TOKENS` long);
3. **constructs**: :data:`FORBIDDEN` lists, per notebook, small patterns that give that notebook's
   answers away (``_`` is any expression, any other name any name); a release before the
   notebook's deadline contains none of them.

:data:`KNOWN` holds today's findings in notebooks' own code (another notebook's reference shows up
in an earlier notebook's module), each with its reason; a finding not listed there fails, and so
does a listed one that is gone (remove it). ``test_*_is_flagged_when_put_back`` puts each helper that
used to leak (``OLD_HELPERS``) back into a copy of ``helpers/`` and checks that it is caught.
"""

from __future__ import annotations

import ast
import difflib
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.export import module_name, render_module, source_notebooks
from helpers.notebook import BEGIN_SOLUTION, END_SOLUTION, cell_kind, cell_source, nbgrader_meta, read_notebook

ROOT = Path(__file__).resolve().parent.parent
MIN_NODES = 12
MIN_TOKENS = 40
SIMILAR = 0.75

# Per notebook: (construct, the graded function it answers). No release before that notebook's
# deadline may contain one: helpers/ is in every release, notebook j's module in releases after j.
FORBIDDEN: dict[str, list[tuple[str, str]]] = {
    "01_tokenizer_gpt2": [
        ('struct.pack("<Q", _)', "read_safetensors"),  # the header: its length as 8 little-endian bytes,
        ('struct.unpack("<Q", _)', "read_safetensors"),
        ('int.from_bytes(_, "little")', "read_safetensors"),
        ('"data_offsets"', "read_safetensors"),  # ... then JSON with each tensor's byte range
        ("_.get(_ + _, math.inf)", "bpe_merge"),  # the rank of an adjacent pair
        ("0.044715", "gelu"),  # the tanh approximation
        ("_.rsqrt(_ + _)", "layer_norm"),
        ("_.scaled_dot_product_attention(_, _, _, ...)", "causal_self_attention"),
        ("_.gather(-1, _.unsqueeze(-1)).squeeze(-1)", "logprobs_from_logits"),
        ("_.logsumexp(_, dim=-1)", "logprobs_from_logits"),
        ("_.multinomial(_, num_samples=1)", "sample_next_token"),
    ],
    "02_sft": [
        ("torch.full((_, _), _, dtype=_)", "pad_batch"),
        ("_.cumsum(dim=-1) - 1", "position_ids_from_mask"),
        ("_.cumsum(-1) - 1", "position_ids_from_mask"),
        ("_[:, :-1][_]", "sft_loss"),  # position t predicts token t + 1, where the mask says so
        ("_[:, 1:][_]", "sft_loss"),
        ("_[:, 1:].bool()", "sft_loss"),
        ("_ / (_ + 1e-06)", "clip_grad_norm_"),
        ("math.cos(math.pi * _)", "cosine_lr"),
        ("_.addcdiv_(_, _, value=_)", "adamw_step"),
        ("_.addcmul_(_, _, value=_)", "adamw_step"),
        ("_.dim() >= 2", "sft_train_step"),  # which parameters decay
    ],
    "03_preference_data": [
        ("range(_ + 1, len(_))", "ranking_to_pairs"),  # every p < q
        ("itertools.combinations(_, 2)", "ranking_to_pairs"),
        ("_.sigmoid(_ - _)", "bradley_terry_probability"),
        ("1 / (1 + _.exp(-_))", "bradley_terry_probability"),  # the stable two-branch sigmoid
        ("_.exp(_) / (1 + _.exp(_))", "bradley_terry_probability"),
        ("len(_ & _) / len(_)", "agreement_rate"),
    ],
    "04_reward_model": [
        ("_.where(_, _, -1).amax(dim=1)", "last_token_index"),
        ("_.sum(dim=1) - 1", "last_token_index"),
        ("_.sum(-1) - 1", "last_token_index"),
        ("_.sum(dim=-1) - 1", "last_token_index"),
        ("_.logsigmoid(_ - _)", "preference_loss"),
        ("(_ > _).double() + 0.5 * (_ == _).double()", "pairwise_accuracy"),
    ],
    "05_value_head": [
        ("reversed(range(_.shape[1]))", "monte_carlo_returns"),  # the backward pass over the tokens
        ("1 - _.var(_ - _) / _", "explained_variance"),
        ("1 - (_ - _).var() / _.var()", "explained_variance"),
    ],
    "06_gae": [
        ("_.where(_, _, _).sum() / _", "masked_mean"),
        ("(_ * _).sum() / _.sum()", "masked_mean"),
        ("(_ - _) * _.rsqrt(_ + _)", "masked_whiten"),
        ("_.expm1(-_) + _", "kl_estimate"),  # k3
        ("_.exp() - 1 - _", "kl_estimate"),
        ("0.5 * _.square()", "kl_estimate"),  # k2
        ("0.5 * _ ** 2", "kl_estimate"),
        ("_[:, _] + _ * _ * _", "compute_gae"),  # delta_t + gamma * lam * A_{t+1}
    ],
    "07_ppo_loss": [
        ("_.exp(_ - _)", "probability_ratio"),
        ("_.clamp(1 - _, 1 + _)", "clipped_surrogate_loss"),
        ("torch.clamp(_, 1 - _, 1 + _)", "clipped_surrogate_loss"),
        ("_.logsumexp(_, dim=-1) - (_ * _).sum(dim=-1)", "entropy_from_logits"),
        ("(_ - 1).abs() > _", "clip_fraction"),
        ("min(max(_ / _ - 1, -0.2), 0.2)", "AdaptiveKLController"),
    ],
    "08_ppo_loop": [
        ("_[:, _ - 1:-1]", "rollout"),  # the logits that predict the response tokens
        ("((_ == _) & _).any(dim=1)", "score_responses"),  # did the response end with EOS
        ("_.randperm(_, generator=_).split(_)", "minibatch_indices"),
    ],
}

# Other ways to write those answers (each construct above matches its notebook's solution, a helper of
# OLD_HELPERS or one of these; a construct that matches nothing is a typo).
OTHER_FORMS = [
    'n = struct.unpack("<Q", f.read(8))[0]',
    "position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)",
    "pairs = list(itertools.combinations(ranking, 2))",
    "p = math.exp(x) / (1.0 + math.exp(x))",
    "last = mask.sum(dim=1) - 1",
    "last = mask.sum(-1) - 1",
    "last = mask.sum(dim=-1) - 1",
    "ev = 1 - torch.var(returns - values) / var_returns",
    "ev = 1 - (returns - values).var() / returns.var()",
    "mean = torch.where(m, x, 0.0).sum() / m.sum()",
    "mean = (x * mask).sum() / mask.sum()",
    "k3 = log_ratio.exp() - 1 - log_ratio",
    "k2 = 0.5 * log_ratio ** 2",
    "ratio = torch.exp(logprobs - old_logprobs)",
    "clipped = torch.clamp(ratio, 1 - eps, 1 + eps)",
]

# Generic statements and expressions that a graded solution and released code may share. Each is
# written as code; it is compared normalised, like everything else.
IDIOMS = [
    "zero = torch.zeros((), dtype=x.dtype, device=x.device)",  # a 0-d zero of x's dtype and device
    "torch.zeros((), dtype=x.dtype, device=x.device)",
    "inverse = {v: k for k, v in d.items()}",  # a dict inverted
    "got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__",  # an error message's detail
]

# Findings in notebooks' own code (not in helpers/, which must stay clean), each with its reason:
# (released module, graded notebook, graded function) -> why it is still there.
KNOWN: dict[tuple[str, str, str], str] = {
    ("minirlhf.tokenizer_gpt2", "02_sft", "position_ids_from_mask"): (
        "notebook 01's GPT2.hidden_states_cached derives position ids from the attention mask inside its own "
        "solution, the line notebook 02 grades as position_ids_from_mask; release 02 ships it in "
        "minirlhf/tokenizer_gpt2.py. Fix in notebook 01 or 02."
    ),
    ("minirlhf.value_head", "06_gae", "masked_mean"): (
        "notebook 05's export cell gives a masked_mean (where(m, x, 0).sum() / m.sum()), the core of notebook 06's "
        "graded masked_mean; releases 06-08 ship it in minirlhf/value_head.py. Fix in notebook 05 or 06."
    ),
}


# ----------------------------------------------------------------------------- normalised ASTs


def is_validation(stmt: ast.stmt) -> bool:
    """Input checks: ``raise``, ``assert``, and an ``if`` (or a loop of them) that ends in ``raise``."""
    if isinstance(stmt, (ast.Raise, ast.Assert)):
        return True
    if isinstance(stmt, ast.If) and not stmt.orelse and isinstance(stmt.body[-1], ast.Raise):
        return True
    return isinstance(stmt, ast.For) and not stmt.orelse and all(is_validation(s) for s in stmt.body)


def is_docstring(stmt: ast.AST) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def code_nodes(tree: ast.AST):
    """Every node of ``tree`` outside input checks and docstrings."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.stmt) and (is_validation(node) or is_docstring(node)):
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


_SKIP_FIELDS = {"ctx", "type_comment", "annotation", "returns", "decorator_list", "kind", "type_params"}


def canonical(node: ast.AST, names: dict[str, str] | None = None) -> tuple[str, int]:
    """``(text, size)``: ``node`` with variables renamed in order of first use, numbers as ``#``,
    f-strings as ``F``, docstrings, annotations and input checks left out; ``size`` counts its nodes."""
    names = {} if names is None else names

    def rename(name: str) -> str:
        return names.setdefault(name, f"v{len(names)}")

    def walk(n) -> tuple[str, int]:
        if isinstance(n, list):
            kept = [c for c in n if not (isinstance(c, ast.stmt) and (is_validation(c) or is_docstring(c)))]
            parts = [walk(c) for c in kept]
            return "[" + ",".join(p for p, _ in parts) + "]", sum(s for _, s in parts)
        if not isinstance(n, ast.AST):
            return repr(n), 0
        if isinstance(n, (ast.expr_context, ast.operator, ast.unaryop, ast.cmpop, ast.boolop)):
            return type(n).__name__, 0
        if isinstance(n, ast.Name):
            return rename(n.id), 1
        if isinstance(n, ast.arg):
            return rename(n.arg), 1
        if isinstance(n, ast.Constant):
            is_number = isinstance(n.value, (int, float, complex)) and not isinstance(n.value, bool)
            return ("#" if is_number else repr(n.value)), 1
        if isinstance(n, ast.JoinedStr):
            return "F", 1
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            rename(n.name)
        parts, size = [], 1
        for field, value in ast.iter_fields(n):
            if field in _SKIP_FIELDS or field == "name" and isinstance(n, (ast.FunctionDef, ast.ClassDef)):
                continue
            text, s = walk(value)
            parts.append(text)
            size += s
        return f"{type(n).__name__}({','.join(parts)})", size

    return walk(node)


def node_tokens(stmts: list[ast.stmt]) -> list[str]:
    """The node sequence of ``stmts`` for the near-copy check (names and numbers anonymous)."""
    out = []
    for stmt in stmts:
        for n in code_nodes(stmt):
            if isinstance(n, ast.expr_context):
                continue
            token = type(n).__name__
            if isinstance(n, ast.Attribute):
                token += "." + n.attr
            elif isinstance(n, ast.keyword):
                token += f"={n.arg}"
            elif isinstance(n, ast.Constant) and isinstance(n.value, str):
                token += repr(n.value)[:20]
            out.append(token)
    return out


def matches(pattern: ast.AST, node: ast.AST) -> bool:
    """``node`` has the shape of ``pattern``: ``_`` is any expression, any other name any name, a
    trailing ``...`` argument any further arguments; keywords of the pattern must be present."""
    if isinstance(pattern, ast.Name) and pattern.id == "_":
        return isinstance(node, ast.expr)
    if type(pattern) is not type(node):
        return False
    if isinstance(pattern, ast.Name):
        return True
    if isinstance(pattern, ast.Constant):
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (pattern.value, node.value))
        return pattern.value == node.value and (numbers or type(pattern.value) is type(node.value))
    if isinstance(pattern, ast.Call):
        args = pattern.args
        if args and isinstance(args[-1], ast.Constant) and args[-1].value is Ellipsis:
            args, rest_ok = args[:-1], True
        else:
            rest_ok = False
        if len(node.args) < len(args) or (not rest_ok and len(node.args) != len(args)):
            return False
        given = {k.arg: k.value for k in node.keywords}
        return (matches(pattern.func, node.func) and all(matches(p, n) for p, n in zip(args, node.args))
                and all(k.arg in given and matches(k.value, given[k.arg]) for k in pattern.keywords))
    for field, p_value in ast.iter_fields(pattern):
        if field == "ctx":
            continue
        n_value = getattr(node, field, None)
        if isinstance(p_value, list):
            if not isinstance(n_value, list) or len(p_value) != len(n_value):
                return False
            if not all(matches(p, n) if isinstance(p, ast.AST) else p == n for p, n in zip(p_value, n_value)):
                return False
        elif isinstance(p_value, ast.AST):
            if not isinstance(n_value, ast.AST) or not matches(p_value, n_value):
                return False
        elif p_value != n_value:
            return False
    return True


# ----------------------------------------------------------------------------- graded and released code


@dataclass
class Graded:
    nb_id: str
    name: str  # grade id, or grade id.method for a class
    stmts: list[ast.stmt]


def graded_units(notebook: Path, nb_id: str) -> list[Graded]:
    """The statements between the solution markers, per function (per method for a class)."""
    out = []
    for cell in read_notebook(notebook)["cells"]:
        if cell_kind(cell) != "solution":
            continue
        src, grade_id = cell_source(cell), nbgrader_meta(cell)["grade_id"]
        regions, start = [], None
        for i, line in enumerate(src.split("\n"), 1):
            if line.strip() == BEGIN_SOLUTION:
                start = i
            elif line.strip() == END_SOLUTION:
                regions.append((start, i))
        for fn in ast.walk(ast.parse(src)):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                stmts = [s for s in fn.body if any(a < s.lineno and s.end_lineno < b for a, b in regions)]
                if stmts:
                    out.append(Graded(nb_id, grade_id if fn.name == grade_id else f"{grade_id}.{fn.name}", stmts))
    return out


@dataclass
class Released:
    where: str  # "helpers/world.py" or "minirlhf.sft"
    source: str
    after: str | None  # the notebook whose module this is (None: helpers/, in every release)


def released_code(root: Path) -> list[Released]:
    """``root/helpers/**.py`` (every release) and each course notebook's exported module (releases after it)."""
    out = [Released(str(p.relative_to(root)), p.read_text(encoding="utf-8"), None)
           for p in sorted((root / "helpers").rglob("*.py"))]
    for nb_id, path in source_notebooks(ROOT):
        out.append(Released(f"minirlhf.{module_name(nb_id)}", render_module(path), nb_id))
    return out


@dataclass(frozen=True)
class Finding:
    where: str  # "helpers/world.py" or "minirlhf.sft"
    line: int
    nb_id: str
    graded: str  # the graded function it gives away
    check: str  # "subtree", "near copy" or the construct of FORBIDDEN
    code: str

    def __str__(self) -> str:
        return f"{self.where}:{self.line} gives away {self.nb_id} {self.graded} ({self.check}): {self.code[:100]!r}"


def find_leaks(released: list[Released], graded: dict[str, list[Graded]]) -> list[Finding]:
    idioms = {canonical(ast.parse(i).body[0])[0] for i in IDIOMS}
    subtree_index: dict[str, list[Graded]] = {}
    for units in graded.values():
        for unit in units:
            for stmt in unit.stmts:
                for n in code_nodes(stmt):
                    if isinstance(n, (ast.stmt, ast.expr)):
                        text, size = canonical(n)
                        if size >= MIN_NODES and text not in idioms:
                            subtree_index.setdefault(text, []).append(unit)
    patterns = {nb_id: [(p, name, ast.parse(p, mode="eval").body) for p, name in ps] for nb_id, ps in FORBIDDEN.items()}
    graded_tokens = {nb_id: [(u, t) for u in units if len(t := node_tokens(u.stmts)) >= MIN_TOKENS]
                     for nb_id, units in graded.items()}
    findings: set[Finding] = set()
    for rel in released:
        later = [nb_id for nb_id in graded if rel.after is None or nb_id > rel.after]
        tree = ast.parse(rel.source)
        for n in code_nodes(tree):
            if not isinstance(n, (ast.stmt, ast.expr)):
                continue
            text, size = canonical(n)
            if size >= MIN_NODES:
                for unit in subtree_index.get(text, ()):
                    if unit.nb_id in later:
                        findings.add(Finding(rel.where, n.lineno, unit.nb_id, unit.name, "subtree", ast.unparse(n)))
            for nb_id in later:
                for text_p, name, pattern in patterns.get(nb_id, ()):
                    if matches(pattern, n):
                        findings.add(Finding(rel.where, n.lineno, nb_id, name, text_p, ast.unparse(n)))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            tokens = node_tokens(fn.body)
            if len(tokens) < MIN_TOKENS:
                continue
            for nb_id in later:
                for unit, theirs in graded_tokens[nb_id]:
                    alike = difflib.SequenceMatcher(None, tokens, theirs, autojunk=False)
                    if alike.real_quick_ratio() >= SIMILAR and alike.quick_ratio() >= SIMILAR and alike.ratio() >= SIMILAR:
                        findings.add(Finding(rel.where, fn.lineno, nb_id, unit.name, "near copy", f"def {fn.name}"))
    return sorted(findings, key=lambda f: (f.where, f.line, f.nb_id, f.graded, f.check))


@pytest.fixture(scope="module")
def graded() -> dict[str, list[Graded]]:
    return {nb_id: graded_units(path, nb_id) for nb_id, path in source_notebooks(ROOT)}


# ----------------------------------------------------------------------------- the tests


def test_released_code_paraphrases_no_graded_solution(graded):
    findings = find_leaks(released_code(ROOT), graded)
    in_helpers = [str(f) for f in findings if f.where.startswith("helpers/")]
    assert not in_helpers, "helpers/ (in every release) gives graded solutions away:\n" + "\n".join(in_helpers)
    found = {(f.where, f.nb_id, f.graded) for f in findings}
    new = [str(f) for f in findings if (f.where, f.nb_id, f.graded) not in KNOWN]
    assert not new, "released modules give later notebooks' solutions away:\n" + "\n".join(new)
    gone = sorted(set(KNOWN) - found)
    assert not gone, f"KNOWN lists findings that are gone, remove them: {gone}"


def test_every_forbidden_construct_answers_a_graded_function(graded):
    """Each construct names a graded function of its notebook and matches that notebook's solutions, a
    helper that used to leak, or another way to write the answer (OTHER_FORMS): none is a typo."""
    examples = [ast.parse(code) for _, code, _, _ in OLD_HELPERS.values()] + [ast.parse(c) for c in OTHER_FORMS]
    assert set(FORBIDDEN) == set(graded), "every notebook lists the constructs its release must not precede"
    for nb_id, patterns in FORBIDDEN.items():
        names = {unit.name.split(".")[0] for unit in graded[nb_id]}
        solutions = [n for unit in graded[nb_id] for stmt in unit.stmts for n in ast.walk(stmt)]
        for text, name in patterns:
            assert name in names, f"{nb_id}: {name} is not graded there"
            pattern = ast.parse(text, mode="eval").body
            assert any(matches(pattern, n) for n in solutions) or any(
                matches(pattern, n) for tree in examples for n in ast.walk(tree)), f"{nb_id}: {text} matches nothing"


# What helpers/ held before builders/ took the model builders out (verbatim): each must be caught
# when put back. name -> (file under helpers/, code, notebook, the graded function it gives away).
OLD_HELPERS: dict[str, tuple[str, str, str, str]] = {
    "default_model._lr_at": ("default_model.py", '''
def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))
''', "02_sft", "cosine_lr"),
    "default_model._batch": ("default_model.py", '''
def _batch(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``[B, T]`` ids (pad = EOT) and the 0/1 mask of real tokens."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), EOT_ID, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask
''', "02_sft", "pad_batch"),
    "default_model._sampled_loss": ("default_model.py", '''
def _sampled_loss(model: GPT2, ids: torch.Tensor, mask: torch.Tensor, world_ids: torch.Tensor,
                  local: torch.Tensor, others: torch.Tensor, n_negatives: int, g: torch.Generator) -> torch.Tensor:
    """Cross-entropy over the world's tokens + ``n_negatives`` uniformly sampled other tokens."""
    h = model.hidden_states(ids)
    valid = mask[:, 1:].bool()
    hs = h[:, :-1][valid]  # [N, C] states that predict a real token
    ys = local[ids[:, 1:][valid]]  # [N] index into world_ids
    neg = others[torch.randint(len(others), (n_negatives,), generator=g)]
    W = model.wte.weight
    logits = hs @ torch.cat([W[world_ids], W[neg]]).T  # [N, K + M]
    correction = torch.zeros(logits.shape[1])
    correction[len(world_ids):] = math.log(len(others) / n_negatives)
    return F.cross_entropy(logits + correction, ys)
''', "02_sft", "sft_loss"),
    "default_model._full_loss": ("default_model.py", '''
@torch.no_grad()
def _full_loss(model: GPT2, rows: list[list[int]], in_world: torch.Tensor, batch_size: int = 8) -> tuple[float, float]:
    total, outside, count = 0.0, 0.0, 0
    for i in range(0, len(rows), batch_size):
        ids, mask = _batch(rows[i: i + batch_size])
        h = model.hidden_states(ids)
        valid = mask[:, 1:].bool()
        logits = model.lm_head(h[:, :-1][valid])
        total += float(F.cross_entropy(logits, ids[:, 1:][valid], reduction="sum"))
        outside += float(torch.softmax(logits, dim=-1)[:, ~in_world].sum())
        count += int(valid.sum())
    return total / max(count, 1), outside / max(count, 1)
''', "02_sft", "sft_loss"),
    "default_model.train_default_model (decay groups)": ("default_model.py", '''
def _optimizer(model, lr, weight_decay):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
''', "02_sft", "sft_train_step"),
    "default_model._write_safetensors": ("default_model.py", '''
def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A minimal safetensors writer (header JSON + raw little-endian bytes), no extra package."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        data = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            f.write(b)
''', "01_tokenizer_gpt2", "read_safetensors"),
    "world._sigmoid": ("world.py", '''
def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)
''', "03_preference_data", "bradley_terry_probability"),
    "preference_pipeline._gold_agreement": ("preference_pipeline.py", '''
def _gold_agreement(world: World, rankings: list[dict[str, Any]]) -> float | None:
    right = total = 0
    for r in rankings:
        gold = [world.gold_score(r["prompt"], t) for t in r["responses"]]
        order = r["ranking"]
        for p in range(len(order)):
            for q in range(p + 1, len(order)):
                delta = gold[order[p]] - gold[order[q]]
                if delta != 0:
                    total += 1
                    right += delta > 0
    return right / total if total else None
''', "03_preference_data", "ranking_to_pairs"),
}


@pytest.mark.parametrize("name", sorted(OLD_HELPERS))
def test_old_helper_is_flagged_when_put_back(name, graded, tmp_path):
    file, code, nb_id, graded_fn = OLD_HELPERS[name]
    shutil.copytree(ROOT / "helpers", tmp_path / "helpers", ignore=shutil.ignore_patterns("__pycache__", "data"))
    target = tmp_path / "helpers" / file
    before = target.read_text(encoding="utf-8").rstrip("\n") + "\n\n"
    target.write_text(before + code.lstrip("\n"), encoding="utf-8")
    first = before.count("\n") + 1  # the put-back code starts on this line
    copy = [r for r in released_code(tmp_path) if r.where == f"helpers/{file}"]
    findings = [f for f in find_leaks(copy, graded) if f.line >= first]
    assert (nb_id, graded_fn) in {(f.nb_id, f.graded) for f in findings}, (
        f"{name} put back into helpers/{file} is not flagged as {nb_id} {graded_fn}; found: {[str(f) for f in findings]}")
