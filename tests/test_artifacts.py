"""helpers.artifacts (keys, reuse, corruption, atomic builds, shipping) and helpers.default_model.

Every test runs with its own cache (RLHF_COURSE_CACHE) and working directory under tmp_path,
and its own copy of the artifact registry.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import artifacts
from helpers.artifacts import ArtifactError, UnknownArtifactError


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A fresh cache, an empty working directory and a private registry."""
    cache = tmp_path / "cache"
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("RLHF_COURSE_CACHE", str(cache))
    monkeypatch.chdir(work)
    import helpers.default_model  # noqa: F401  (registers "default_model" in the real registry first)

    monkeypatch.setattr(artifacts, "_REGISTRY", dict(artifacts._REGISTRY))
    return tmp_path


class Recorder:
    """A toy artifact: ``data.txt`` holding the config as JSON; counts builds and loads."""

    def __init__(self, dep: Path, fail_after_write: bool = False) -> None:
        self.dep, self.builds, self.loads, self.fail_after_write = dep, 0, [], fail_after_write

    def build(self, out: Path, **config) -> None:
        self.builds += 1
        assert out.is_dir() and not any(out.iterdir()), "build_fn must get an empty, existing folder"
        (out / "data.txt").write_text(json.dumps(config, sort_keys=True))
        (out / "sub").mkdir()
        (out / "sub" / "more.bin").write_bytes(bytes(range(256)))
        if self.fail_after_write:
            raise RuntimeError("the build broke half-way")

    def load(self, folder: Path, **config) -> dict:
        self.loads.append(folder)
        return json.loads((folder / "data.txt").read_text())


def _register(sandbox: Path, name: str = "toy", **kw) -> Recorder:
    dep = sandbox / f"{name}_dep.py"
    if not dep.exists():
        dep.write_text("VALUE = 1\n")
    rec = Recorder(dep, **kw)
    artifacts.register(name, rec.build, rec.load, depends_on=[str(dep)], defaults={"size": 3})
    return rec


# ----------------------------------------------------------------------------- keys


def test_key_depends_on_config_defaults_and_dependency_source(sandbox):
    rec = _register(sandbox)
    k = artifacts.artifact_key("toy", size=3)
    assert len(k) == 64 and all(c in "0123456789abcdef" for c in k)
    assert artifacts.artifact_key("toy") == k, "defaults must fill in missing config keys"
    assert artifacts.artifact_key("toy", size=4) != k
    assert artifacts.artifact_key("toy", size=3, extra=[1, 2]) != k
    assert artifacts.artifact_key("toy", size=3, extra=[1, 2]) == artifacts.artifact_key("toy", extra=(1, 2), size=3)
    rec.dep.write_text("VALUE = 2\n")  # the code that makes the artifact changed
    assert artifacts.artifact_key("toy") != k
    rec.dep.write_text("VALUE = 1\n")
    assert artifacts.artifact_key("toy") == k, "the key is a pure function of code bytes and config"
    assert artifacts.folder_name("toy") == f"toy-{k[:16]}"


def test_key_follows_module_and_artifact_dependencies(sandbox):
    _register(sandbox, "base")
    artifacts.register("derived", lambda out, **c: None, lambda p, **c: p,
                       depends_on=["helpers.world", "artifact:base"])
    k = artifacts.artifact_key("derived")
    (sandbox / "base_dep.py").write_text("VALUE = 'changed'\n")
    assert artifacts.artifact_key("derived") != k, "a change in base's code must invalidate derived"


def test_bad_config_and_unknown_names(sandbox):
    _register(sandbox)
    with pytest.raises(TypeError, match="cannot be part of an artifact config"):
        artifacts.artifact_key("toy", size=object())
    with pytest.raises(UnknownArtifactError) as info:
        artifacts.get("no_such_thing")
    msg = str(info.value)
    assert "no_such_thing" in msg and "toy" in msg and "default_model" in msg, msg
    assert isinstance(info.value, KeyError)
    artifacts.register("broken", lambda out, **c: None, lambda p, **c: p, depends_on=["helpers/no_such_file.py"])
    with pytest.raises(ArtifactError, match="no_such_file"):
        artifacts.get("broken")


# ----------------------------------------------------------------------------- build, reuse, corruption


def test_built_once_then_reused(sandbox):
    rec = _register(sandbox)
    assert artifacts.get("toy", size=5) == {"size": 5}
    assert artifacts.get("toy", size=5) == {"size": 5}
    assert rec.builds == 1
    folder = rec.loads[-1]
    assert folder == artifacts.cache_root() / artifacts.folder_name("toy", size=5)
    assert str(folder).startswith(str(sandbox / "cache" / "artifacts"))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["key"] == artifacts.artifact_key("toy", size=5)
    assert manifest["config"] == {"size": 5}
    assert set(manifest["files"]) == {"data.txt", "sub/more.bin"}
    assert artifacts.get("toy", size=6) == {"size": 6} and rec.builds == 2
    assert artifacts.locate("toy", size=7, build=False) is None and rec.builds == 2


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "delete_file", "delete_manifest", "garble_manifest"])
def test_corrupt_artifact_is_rebuilt(sandbox, capsys, damage):
    rec = _register(sandbox)
    artifacts.get("toy")
    folder = rec.loads[-1]
    target = folder / "sub" / "more.bin"
    if damage == "flip_byte":
        data = bytearray(target.read_bytes())
        data[10] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:100])
    elif damage == "delete_file":
        target.unlink()
    elif damage == "delete_manifest":
        (folder / "manifest.json").unlink()
    else:
        (folder / "manifest.json").write_text("{not json")
    capsys.readouterr()
    assert artifacts.get("toy") == {"size": 3}
    assert rec.builds == 2
    out = capsys.readouterr()
    assert "rebuilding" in out.out and out.err == "", "a corrupt artifact is reported on stdout, never stderr"
    assert (folder / "sub" / "more.bin").read_bytes() == bytes(range(256))


def test_unloadable_artifact_is_rebuilt_once_then_error(sandbox, capsys):
    rec = _register(sandbox)
    calls = {"n": 0}

    def flaky_load(folder, **config):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("cannot parse")
        return rec.load(folder, **config)

    artifacts.register("toy", rec.build, flaky_load, depends_on=[str(rec.dep)], defaults={"size": 3})
    assert artifacts.get("toy") == {"size": 3} and rec.builds == 2
    assert "could not load" in capsys.readouterr().out

    def never(folder, **config):
        raise ValueError("never readable")

    artifacts.register("toy", rec.build, never, depends_on=[str(rec.dep)], defaults={"size": 3})
    with pytest.raises(ArtifactError, match="still cannot be loaded"):
        artifacts.get("toy")


def test_failed_build_leaves_nothing_under_the_final_name(sandbox):
    rec = _register(sandbox, fail_after_write=True)
    with pytest.raises(RuntimeError, match="half-way"):
        artifacts.get("toy")
    root = artifacts.cache_root()
    assert not (root / artifacts.folder_name("toy")).exists()
    assert list(root.iterdir()) == [], f"temporary folders left behind: {list(root.iterdir())}"
    rec.fail_after_write = False
    assert artifacts.get("toy") == {"size": 3} and rec.builds == 2


def test_concurrent_builder_loses_the_race_gracefully(sandbox):
    """While one build runs, another process finishes the same artifact first: both end up with a
    complete artifact, the loser's temporary folder is discarded, nothing is corrupted."""
    rec = _register(sandbox)
    inner = {"done": False}

    def racing_build(out, **config):
        if not inner["done"]:
            inner["done"] = True
            assert artifacts.get("toy") == {"size": 3}  # the "other process" completes first
        rec.build(out, **config)

    artifacts.register("toy", racing_build, rec.load, depends_on=[str(rec.dep)], defaults={"size": 3})
    assert artifacts.get("toy") == {"size": 3}
    assert rec.builds == 2
    root = artifacts.cache_root()
    assert [p.name for p in root.iterdir()] == [artifacts.folder_name("toy")]
    assert artifacts.locate("toy", build=False) == root / artifacts.folder_name("toy")


def test_concurrent_processes(sandbox):
    """Two real processes build the same artifact at the same time."""
    import subprocess
    import sys

    dep = sandbox / "proc_dep.py"
    dep.write_text("X = 1\n")
    script = f"""
import json, sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
from helpers import artifacts
def build(out, **c):
    (out / "a.txt").write_text("x" * 100000)
    time.sleep(0.5)
    (out / "b.txt").write_text(json.dumps(c))
def load(p, **c):
    return (p / "b.txt").read_text()
artifacts.register("proc", build, load, depends_on=[{str(dep)!r}])
print(artifacts.get("proc", n=1))
"""
    env = dict(os.environ)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.strip() == '{"n": 1}'
    root = artifacts.cache_root()
    assert len([p for p in root.iterdir()]) == 1


# ----------------------------------------------------------------------------- ship, precedence, clear


def test_ship_copies_and_shipped_folder_takes_precedence(sandbox):
    rec = _register(sandbox)
    release = sandbox / "release" / "02_sft"
    shipped = artifacts.ship(release, ["toy"], size=4)
    assert rec.builds == 1, "ship builds what is missing"
    target = release / "artifacts" / artifacts.folder_name("toy", size=4)
    assert shipped == [target]
    assert (target / "sub" / "more.bin").read_bytes() == bytes(range(256))
    assert json.loads((target / "manifest.json").read_text())["key"] == artifacts.artifact_key("toy", size=4)
    assert sorted(p.name for p in (release / "artifacts").iterdir()) == sorted([target.name, artifacts.SOURCES]), (
        "no temporary folders left")
    assert artifacts.ship(release, ["toy"], size=4) == [target] and rec.builds == 1  # idempotent

    os.chdir(release)  # a student runs the notebook beside its shipped artifacts
    assert artifacts.get("toy", size=4) == {"size": 4}
    assert rec.loads[-1] == Path.cwd() / "artifacts" / target.name, "./artifacts must be read before the cache"
    assert artifacts.clear() == 1  # the cache is emptied; ./artifacts is never touched
    assert artifacts.get("toy", size=4) == {"size": 4} and rec.builds == 1
    assert target.is_dir()


def test_a_release_without_the_builder_finds_its_artifacts_by_the_recorded_digests(sandbox):
    """builders/ is not released: ship() records its digest in artifacts/sources.json, so a release
    computes the same key without the file and loads the shipped folder without building."""
    rec = _register(sandbox)
    release = sandbox / "release" / "02_sft"
    artifacts.ship(release, ["toy"], size=4)
    key = artifacts.artifact_key("toy", size=4)
    recorded = json.loads((release / "artifacts" / artifacts.SOURCES).read_text())
    assert recorded == {str(rec.dep): hashlib.sha256(rec.dep.read_bytes()).hexdigest()}
    rec.dep.unlink()  # the student's folder has no builder
    artifacts.clear()
    os.chdir(release)
    assert artifacts.artifact_key("toy", size=4) == key
    assert artifacts.get("toy", size=4) == {"size": 4} and rec.builds == 1
    os.chdir(sandbox)  # anywhere else nothing records the missing file: the error says so
    with pytest.raises(ArtifactError, match="toy_dep.py.*sources.json"):
        artifacts.artifact_key("toy", size=4)


def test_corrupt_shipped_artifact_falls_back_to_the_cache(sandbox, capsys):
    rec = _register(sandbox)
    release = sandbox / "rel"
    (target,) = artifacts.ship(release, ["toy"])
    artifacts.clear()
    (target / "data.txt").write_text("tampered")
    os.chdir(release)
    assert artifacts.get("toy") == {"size": 3}
    assert rec.loads[-1].parent == artifacts.cache_root()
    assert "shipped artifact" in capsys.readouterr().out
    assert (target / "data.txt").read_text() == "tampered", "shipped folders are only read"


def test_extra_read_only_places(sandbox, monkeypatch):
    rec = _register(sandbox)
    elsewhere = sandbox / "graded_release"
    (target,) = artifacts.ship(elsewhere, ["toy"])
    artifacts.clear()
    monkeypatch.setenv("RLHF_ARTIFACTS", os.pathsep.join([str(sandbox / "nothing"), str(elsewhere / "artifacts")]))
    assert artifacts.get("toy") == {"size": 3}
    assert rec.builds == 1 and rec.loads[-1] == target


def test_clear_by_name(sandbox):
    _register(sandbox, "toy")
    _register(sandbox, "toy_two")
    artifacts.get("toy", size=1)
    artifacts.get("toy", size=2)
    artifacts.get("toy_two")
    assert artifacts.clear("toy") == 2
    assert [p.name for p in artifacts.cache_root().iterdir()] == [artifacts.folder_name("toy_two")]
    assert artifacts.clear() == 1 and artifacts.clear() == 0


# ----------------------------------------------------------------------------- the default model


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory):
    """The tiny default model, built once through the artifact cache of a private cache folder,
    the way a graded notebook builds it: NBGRADER_EXECUTION set, nothing may reach stderr."""
    import contextlib
    import io
    import warnings

    from helpers import default_model

    cache = tmp_path_factory.mktemp("dm_cache")
    saved = {k: os.environ.get(k) for k in ("RLHF_COURSE_CACHE", "NBGRADER_EXECUTION", "COURSE_NO_PROGRESS")}
    os.environ.update(RLHF_COURSE_CACHE=str(cache), NBGRADER_EXECUTION="autograde", COURSE_NO_PROGRESS="")
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("error")  # a warning would land on stderr in a notebook
            model = default_model.load_default_model()  # tiny under grading
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert err.getvalue() == "", f"building the tiny model wrote to stderr: {err.getvalue()[:500]}"
    os.environ["RLHF_COURSE_CACHE"] = str(cache)
    try:
        folder = artifacts.locate("default_model", tiny=True, build=False)
        log = default_model.read_training_log(tiny=True)
    finally:
        if saved["RLHF_COURSE_CACHE"] is None:
            os.environ.pop("RLHF_COURSE_CACHE")
        else:
            os.environ["RLHF_COURSE_CACHE"] = saved["RLHF_COURSE_CACHE"]
    assert folder is not None and folder.parent == cache / "artifacts"
    return model, folder, log, cache


def _format_rate(model, world, prompts, ranks) -> float:
    """Fraction of greedy responses that end with <|endoftext|> within 32 tokens and use only world words."""
    from helpers.world import format_prompt, words_of
    from minirlhf.tokenizer_gpt2 import decode, encode, generate

    vocab = world.vocabulary()
    ok = 0
    for p in prompts:
        ids = torch.tensor([encode(format_prompt(p), ranks)])
        tokens, _ = generate(model, ids, torch.ones_like(ids), 32, eos_id=50256, temperature=0.0)
        new = tokens[0, ids.shape[1]:].tolist()
        if 50256 not in new:
            continue
        text = decode(new[: new.index(50256)], ranks)
        words = words_of(text)
        ok += bool(words) and all(w in vocab for w in words) and text.isascii()
    return ok / len(prompts)


def test_tiny_default_model_trains_and_learns_the_format(tiny_artifact):
    from helpers.vocab import load_gpt2_ranks
    from helpers.world import World
    from minirlhf.tokenizer_gpt2 import GPT2

    model, folder, log, _ = tiny_artifact
    assert type(model) is GPT2 and not model.training
    assert model.config.vocab_size == 50257
    losses = log["loss"]
    first, last = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert first > 9.0, f"an untrained model's loss should be near ln(50257) = 10.8, got {first:.2f}"
    assert last < first - 4.0, f"loss did not go down enough: first {first:.2f}, last {last:.2f}"
    assert log["val_loss"][-1] < 5.0, f"held-out full-softmax loss {log['val_loss'][-1]:.2f}"
    assert log["p_outside_world"] < 0.25, f"P(token outside the world) = {log['p_outside_world']:.3f}"

    world, ranks = World(0), load_gpt2_ranks()
    prompts = world.prompts("val")[:12]
    trained = _format_rate(model, world, prompts, ranks)
    torch.manual_seed(0)
    untrained = _format_rate(GPT2(model.config).eval(), world, prompts, ranks)
    assert trained >= 0.5 and trained > untrained, f"in-format rate trained {trained:.2f}, untrained {untrained:.2f}"


def test_default_model_files_are_a_hub_checkpoint(tiny_artifact):
    """config.json + model.safetensors load with load_gpt2_checkpoint and with transformers (oracle)."""
    from minirlhf.tokenizer_gpt2 import load_gpt2_checkpoint

    model, folder, _, _ = tiny_artifact
    again = load_gpt2_checkpoint(folder)
    assert again.config == model.config
    ids = torch.tensor([[40, 3849, 25, 50256, 262]])
    with torch.no_grad():
        ours = model(ids)
        assert torch.equal(again(ids), ours)
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        theirs = hf(ids).logits
    assert torch.allclose(theirs, ours, atol=1e-4), float((theirs - ours).abs().max())


def test_policy_model_switch(tiny_artifact, monkeypatch, tmp_path):
    from helpers import default_model
    from minirlhf.tokenizer_gpt2 import GPT2

    model, folder, _, cache = tiny_artifact
    monkeypatch.setenv("RLHF_COURSE_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    # "GPT-2 small" here is the tiny checkpoint folder, given through GPT2_WEIGHTS
    monkeypatch.setenv("GPT2_WEIGHTS", str(folder))
    monkeypatch.setenv("RLHF_MODEL", "gpt2-small")
    assert default_model.model_choice() == "gpt2-small"
    small = default_model.policy_model()
    assert type(small) is GPT2 and small.config == model.config
    monkeypatch.setenv("RLHF_MODEL", "nonsense")
    with pytest.raises(ValueError, match="RLHF_MODEL"):
        default_model.model_choice()
    monkeypatch.setenv("RLHF_MODEL", "default")
    assert default_model.model_choice() == "default"
    assert default_model.model_choice(prefer_gpt2_small=True) == "gpt2-small"
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")  # grading: always the tiny model
    monkeypatch.setenv("RLHF_MODEL", "gpt2-small")
    graded = default_model.policy_model()
    assert graded.config == default_model.TINY_CONFIG
    for name, p in graded.state_dict().items():
        assert torch.equal(p, model.state_dict()[name]), name


def test_training_is_deterministic_and_keeps_global_rng():
    from builders.default_model import train_default_model
    from helpers.default_model import TINY_CONFIG, TINY_TRAINING

    kw = dict(TINY_TRAINING, steps=3, n_pretrain=200)
    torch.manual_seed(123)
    random.seed(5)
    before_t, before_r = torch.rand(1), random.random()
    torch.manual_seed(123)
    random.seed(5)
    m1, log1 = train_default_model(TINY_CONFIG, progress=False, **kw)
    assert torch.equal(torch.rand(1), before_t) and random.random() == before_r, "global RNGs were disturbed"
    m2, log2 = train_default_model(TINY_CONFIG, progress=False, **kw)
    assert log1["loss"] == log2["loss"]
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))


# ----------------------------------------------------------------------------- builders/ is never released


def test_the_default_model_is_built_by_builders_which_releases_lack(monkeypatch):
    from helpers import default_model

    deps = artifacts._entry("default_model").depends_on
    assert {"builders/default_model.py", "builders/checkpoint.py"} <= set(deps), deps
    for name in ("builders", "builders.default_model", "builders.checkpoint"):
        monkeypatch.setitem(sys.modules, name, None)  # as in a student release: no builders package
    with pytest.raises(ArtifactError, match="builders/default_model.py.*source tree.*artifacts/"):
        default_model.train_default_model()
    with pytest.raises(ArtifactError, match="builders/checkpoint.py"):
        default_model.save_model(None, "nowhere")


def test_a_release_loads_the_shipped_default_model_without_builders(tmp_path):
    """A release folder (helpers/, notebook 01's module, artifacts/), run where builders/ and the course's
    minirlhf/ cannot be imported and the cache is empty: the shipped tiny model loads, unchanged."""
    import shutil

    from helpers import default_model
    from helpers.export import export

    root = Path(__file__).resolve().parent.parent
    release = tmp_path / "02_sft"
    shutil.copytree(root / "helpers", release / "helpers", ignore=shutil.ignore_patterns("__pycache__"))
    export(root, release, before="02_sft")
    artifacts.ship(release, ["default_model"], tiny=True)
    expected = sum(float(p.detach().double().sum()) for p in default_model.load_default_model(tiny=True).parameters())
    script = (
        "import sys, importlib.util\n"
        "from pathlib import Path\n"
        f"sys.path[:] = [p for p in sys.path if Path(p or '.').resolve() != Path({str(root)!r})]\n"
        "sys.path.insert(0, str(Path.cwd()))\n"
        "assert importlib.util.find_spec('builders') is None\n"
        "from helpers.default_model import load_default_model\n"
        "import helpers, minirlhf\n"
        "assert Path(helpers.__file__).parent.parent == Path.cwd() == Path(minirlhf.__file__).parent.parent\n"
        "print(sum(float(p.detach().double().sum()) for p in load_default_model(tiny=True).parameters()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NBGRADER_EXECUTION", "RLHF_ARTIFACTS")}
    env["RLHF_COURSE_CACHE"] = str(tmp_path / "empty_cache")
    proc = subprocess.run([sys.executable, "-c", script], cwd=release, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert float(proc.stdout.strip().splitlines()[-1]) == expected
    assert not (tmp_path / "empty_cache").exists(), "the release built or cached something instead of loading it"
