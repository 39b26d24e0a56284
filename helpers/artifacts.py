"""A cache of built things the notebooks share: trained models, data sets, comparisons.

An *artifact* is a folder of files made by a registered build function, for example the
default model (``helpers.default_model`` registers ``"default_model"``), later the SFT model
or the preference comparisons. A notebook asks for one by name and configuration::

    from helpers import artifacts
    model = artifacts.get("default_model", tiny=False)

and gets it loaded, built first if it is nowhere to be found.

Keys: code + config
-------------------
Every artifact is keyed by ``sha256`` over a canonical JSON of

* the artifact's name and :data:`FORMAT_VERSION` (plus the registered ``version``),
* its configuration (registered defaults updated with the keyword arguments; keys sorted),
* the bytes of the source files it depends on (``depends_on``: dotted module names such as
  ``"helpers.world"`` or paths relative to the course root such as ``"helpers/world.py"``;
  ``"artifact:NAME"`` adds the code dependencies of another registered artifact).

Change a config value, edit ``helpers/world.py``, or re-export notebook 01 and the key changes:
the old artifact is simply not found any more and a new one is built. The folder of an
artifact is ``<name>-<key[:16]>``; its ``manifest.json`` records the full key, the config,
the dependencies' digests and every file's size and sha256.

Where artifacts are looked for
------------------------------
1. ``./artifacts/<name>-<key16>/`` relative to the current working directory: a release ships
   prebuilt artifacts beside the notebook (:func:`ship`), then the folders listed in
   ``$RLHF_ARTIFACTS`` (``os.pathsep``-separated; e.g. the autograder can point it at a
   release's ``artifacts`` folder). These folders are only read. :func:`ship` also writes
   ``sources.json`` there, the digests of the code the artifacts were built from: a release has
   no ``builders/`` (nor later notebooks' modules), and computes the same keys from that record.
2. The cache, ``helpers.weights.cache_dir() / "artifacts"`` (``$RLHF_COURSE_CACHE`` moves the
   root; default ``~/.cache/rlhf-course``).
3. Otherwise the artifact is built (with a progress bar, silent under grading) into a
   temporary folder next to its final place and renamed into place only when complete, so
   nothing half-written ever sits under the final name; of two processes building the same
   artifact at once, the first rename wins and the other one uses the winner's folder.

A folder whose manifest or files do not check out, or that its load function cannot read, is
reported on stdout ("note: ... rebuilding") and rebuilt in the cache.

While grading, nothing is built
-------------------------------
nbgrader gives every cell 30 s, and building even a tiny model can take longer. A graded notebook
calls ``helpers.runtime.configure_for_grading()`` in its setup cell, which calls
:func:`allow_builds` ``(False)``: from then on a missing artifact raises :class:`ArtifactError` at
once, with a message that names the command shipping it (``python -m autograder release``, whose
``artifacts/`` folder sits beside each notebook and is restored by ``nbgrader autograde``).

Registering a builder
---------------------
::

    def build(out_dir: Path, **config) -> None: ...      # write files into out_dir
    def load(path: Path, **config) -> object: ...        # read them back
    artifacts.register("sft_model", build, load,
                       depends_on=["helpers/sft.py", "artifact:default_model"],
                       defaults={"tiny": False})

Modules listed in :data:`PROVIDERS` are imported on first use of their artifact names, so
``artifacts.get("default_model")`` works without importing ``helpers.default_model`` first. Such
a module registers its artifacts in a function ``register_artifacts()`` that it also calls at
import time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

__all__ = [
    "FORMAT_VERSION",
    "PROVIDERS",
    "ArtifactError",
    "UnknownArtifactError",
    "allow_builds",
    "artifact_key",
    "cache_root",
    "clear",
    "folder_name",
    "get",
    "known",
    "locate",
    "path",
    "register",
    "ship",
    "shipped_root",
    "shipped_roots",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SOURCES = "sources.json"  # in a shipped artifacts/ folder: {dependency: sha256} of the code that built them
COURSE_ROOT = Path(__file__).resolve().parent.parent  # the folder holding helpers/ (and minirlhf/)

# Modules that register artifacts when imported: {artifact name: module}. get("name") imports the
# module on first use. Later notebooks' helpers add their names here.
PROVIDERS: dict[str, str] = {
    "default_model": "helpers.default_model",
    "sft_model": "helpers.sft_pipeline",
    "comparisons": "helpers.preference_pipeline",
    "reward_model": "helpers.reward_pipeline",
}


class ArtifactError(RuntimeError):
    """An artifact could not be built, found or read; the message says which and why."""


class UnknownArtifactError(ArtifactError, KeyError):
    """``get``/``ship`` was asked for a name nobody registered; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0]) if self.args else ""


@dataclass
class _Entry:
    name: str
    build_fn: Callable[..., None]
    load_fn: Callable[..., Any]
    depends_on: list[str]
    defaults: dict[str, Any] = field(default_factory=dict)
    version: int = 1


_REGISTRY: dict[str, _Entry] = {}


# ----------------------------------------------------------------------------- registry


def register(
    name: str,
    build_fn: Callable[..., None],
    load_fn: Callable[..., Any],
    depends_on: Iterable[str],
    *,
    defaults: dict[str, Any] | None = None,
    version: int = 1,
) -> None:
    """Register (or replace) the artifact ``name``.

    ``build_fn(out_dir: Path, **config)`` writes the artifact's files into the (empty, existing)
    folder ``out_dir``; ``load_fn(path: Path, **config)`` reads a finished folder and returns the
    object (a model, a list of records...). ``depends_on``: the code the artifact is made by --
    dotted module names (``"helpers.world"``), paths relative to the course root
    (``"helpers/world.py"``) or ``"artifact:OTHER"`` (OTHER's code dependencies, transitively).
    ``defaults``: the configuration used for keys not passed to :func:`get`. Bump ``version`` to
    invalidate every old build of this artifact without touching its code.
    """
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ValueError(f"artifact name must be a non-empty string without '/', got {name!r}")
    if not callable(build_fn) or not callable(load_fn):
        raise TypeError("register: build_fn and load_fn must be callables")
    deps = [depends_on] if isinstance(depends_on, str) else list(depends_on)
    for d in deps:
        if not isinstance(d, str) or not d:
            raise TypeError(f"register({name!r}): depends_on entries must be non-empty strings, got {d!r}")
    _REGISTRY[name] = _Entry(name, build_fn, load_fn, deps, dict(defaults or {}), int(version))


def known() -> list[str]:
    """The names of all registered artifacts (providers in :data:`PROVIDERS` imported first;
    one that fails to import is left out here -- :func:`get` of its name shows the error)."""
    _import_providers(strict=False)
    return sorted(_REGISTRY)


def _import_providers(only: str | None = None, strict: bool = True) -> None:
    """Import the provider modules of unregistered names; a provider module already imported
    (its registration since lost, e.g. a registry swapped by a test) re-registers through its
    ``register_artifacts()`` function."""
    for art, module in PROVIDERS.items():
        if (only is None or art == only) and art not in _REGISTRY:
            already = module in sys.modules
            try:
                mod = importlib.import_module(module)
            except Exception:  # noqa: BLE001
                if strict:
                    raise
                continue
            if already and art not in _REGISTRY and callable(getattr(mod, "register_artifacts", None)):
                mod.register_artifacts()


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        _import_providers(name)
    if name not in _REGISTRY:
        raise UnknownArtifactError(
            f"unknown artifact {name!r}; known artifacts: {', '.join(known()) or '(none)'}. "
            "A notebook's helper module registers its artifacts with helpers.artifacts.register(...) "
            "when imported: import it first."
        )
    return _REGISTRY[name]


# ----------------------------------------------------------------------------- keys


def _canonical(value: Any, where: str = "config") -> Any:
    """A JSON-ready copy of ``value`` with a single spelling (dict keys sorted when dumped)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise TypeError(f"{where}: {value!r} is not a finite number; artifact configs must be JSON values")
        return value
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__dataclass__": type(value).__name__,
                **{k: _canonical(v, f"{where}.{k}") for k, v in dataclasses.asdict(value).items()}}
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: dict keys must be strings, got {k!r}")
            out[k] = _canonical(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"{where}: a {type(value).__name__} ({value!r:.60}) cannot be part of an artifact config; "
        "use JSON values (None, bool, int, float, str, lists, dicts with str keys, dataclasses)"
    )


def _dependency_file(dep: str) -> Path:
    if dep.endswith(".py") or "/" in dep or os.sep in dep:
        p = Path(dep)
        p = p if p.is_absolute() else COURSE_ROOT / p
        if not p.is_file():
            raise ArtifactError(f"artifact dependency {dep!r}: no such file {p}")
        return p
    try:
        spec = importlib.util.find_spec(dep)
    except (ImportError, ValueError) as err:
        raise ArtifactError(f"artifact dependency {dep!r}: cannot find module ({err})") from err
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise ArtifactError(
            f"artifact dependency {dep!r}: module not found (is the course root on sys.path, "
            "and has `python -m autograder export` generated minirlhf/?)"
        )
    return Path(spec.origin)


def _dependency_digests(entry: _Entry, seen: set[str] | None = None) -> dict[str, str]:
    """{dependency: sha256 of its source bytes}, following ``artifact:OTHER`` entries."""
    seen = set() if seen is None else seen
    seen.add(entry.name)
    out: dict[str, str] = {}
    for dep in entry.depends_on:
        if dep.startswith("artifact:"):
            other = dep[len("artifact:"):]
            if other in seen:
                continue
            sub = _entry(other)
            out[dep] = f"version {sub.version}"
            out.update(_dependency_digests(sub, seen))
        else:
            out[dep] = _source_digest(dep)
    return out


def _source_digest(dep: str) -> str:
    """sha256 of a dependency's source; for one a release lacks (``builders/``, later notebooks'
    modules), the digest that :func:`ship` recorded in a shipped ``artifacts/sources.json``."""
    try:
        return hashlib.sha256(_dependency_file(dep).read_bytes()).hexdigest()
    except ArtifactError as err:
        for root in shipped_roots():
            try:
                recorded = json.loads((root / SOURCES).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(recorded, dict) and isinstance(recorded.get(dep), str):
                return recorded[dep]
        raise ArtifactError(f"{err}; no shipped artifacts/{SOURCES} records it either (a student release "
                            "ships its artifacts prebuilt: open the notebook from its release folder)") from None


def _full_config(entry: _Entry, config: dict[str, Any]) -> dict[str, Any]:
    merged = dict(entry.defaults)
    merged.update(config)
    return _canonical(merged)


def _key_material(entry: _Entry, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "name": entry.name,
        "version": entry.version,
        "config": _full_config(entry, config),
        "depends_on": _dependency_digests(entry),
    }


def _digest(material: dict[str, Any]) -> str:
    text = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def artifact_key(name: str, **config: Any) -> str:
    """The full hex sha256 key of artifact ``name`` built with ``config`` by the current code."""
    entry = _entry(name)
    return _digest(_key_material(entry, config))


def folder_name(name: str, **config: Any) -> str:
    """``<name>-<key[:16]>``: the folder the artifact lives in (in the cache or ``./artifacts``)."""
    return f"{name}-{artifact_key(name, **config)[:16]}"


# ----------------------------------------------------------------------------- places


def cache_root() -> Path:
    """``helpers.weights.cache_dir() / "artifacts"`` (``$RLHF_COURSE_CACHE`` moves the root)."""
    from helpers.weights import cache_dir

    return cache_dir() / "artifacts"


def shipped_root() -> Path:
    """``./artifacts`` relative to the current working directory (prebuilt, shipped with a release)."""
    return Path.cwd() / "artifacts"


def shipped_roots() -> list[Path]:
    """The read-only places searched before the cache: ``./artifacts``, then ``$RLHF_ARTIFACTS``."""
    roots = [shipped_root()]
    for part in os.environ.get("RLHF_ARTIFACTS", "").split(os.pathsep):
        if part.strip():
            roots.append(Path(part.strip()).expanduser())
    return roots


def _note(message: str) -> None:
    # stdout, never stderr: a test cell that writes to stderr scores 0 under nbgrader.
    print(f"note: {message}", flush=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _file_list(folder: Path) -> dict[str, dict[str, Any]]:
    files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            rel = p.relative_to(folder).as_posix()
            files[rel] = {"size": p.stat().st_size, "sha256": _sha256(p)}
    return files


def _problem(folder: Path, key: str) -> str | None:
    """Why ``folder`` is not a complete artifact with ``key`` (None if it is)."""
    mpath = folder / MANIFEST
    if not mpath.is_file():
        return "its manifest.json is missing"
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"its manifest.json is unreadable ({err})"
    if not isinstance(manifest, dict) or manifest.get("key") != key:
        return "its manifest.json belongs to another key"
    files = manifest.get("files")
    if not isinstance(files, dict):
        return "its manifest.json lists no files"
    for rel, info in files.items():
        p = folder / rel
        if not p.is_file():
            return f"file {rel} is missing"
        st = p.stat()
        if st.st_size != info.get("size"):
            return f"file {rel} has {st.st_size} bytes, the manifest says {info.get('size')}"
        stamp = (str(p), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, info.get("sha256"))
        if stamp in _verified:
            continue
        if _sha256(p) != info.get("sha256"):
            return f"file {rel} fails its sha256 check"
        _verified.add(stamp)  # hashed once per process while the file stays unchanged
    return None


_verified: set[tuple[Any, ...]] = set()


def _remove_tree(folder: Path) -> None:
    """Delete ``folder``: first renamed aside (atomic), so a reader never sees it half deleted."""
    if not folder.exists():
        return
    trash = folder.with_name(f".trash-{folder.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(folder, trash)
    except OSError:
        trash = folder
    shutil.rmtree(trash, ignore_errors=True)


# ----------------------------------------------------------------------------- build

_builds_allowed = True  # False in a graded notebook (helpers.runtime.configure_for_grading)

SHIP_COMMAND = "python -m autograder release"
_SHIP_HINT = (
    "A graded notebook never builds a model or data set (nbgrader gives each cell 30 s). "
    f"Ship it: `{SHIP_COMMAND}` writes it into release/<id>/artifacts/; in an nbgrader course the same "
    "artifacts/ folder belongs in source/<id>/ (autograder.course.build_course puts it there), and "
    "`nbgrader autograde` copies it beside every submission."
)


def allow_builds(allowed: bool) -> bool:
    """Allow or forbid building missing artifacts in this process; returns the previous setting.

    Forbidden (``False``), :func:`get`, :func:`path` and :func:`locate` raise :class:`ArtifactError` instead of
    building: a graded notebook must find every artifact shipped (or cached), never train one.
    """
    global _builds_allowed
    previous, _builds_allowed = _builds_allowed, bool(allowed)
    return previous


def _not_shipped(name: str, config: dict[str, Any], final: Path) -> ArtifactError:
    """The error of a graded run that would have to build ``name``: where it looked, how to ship it."""
    places = [str(root / final.name) for root in shipped_roots()] + [str(final)]
    others = sorted({p.name for root in shipped_roots() if root.is_dir() for p in root.glob(f"{name}-*")
                     if p.is_dir() and p.name != final.name})
    stale = (f" ({', '.join(others)} is there, built by other code or another configuration: the key covers "
             "the source files an artifact is made from, so ship it again after changing them.)") if others else ""
    return ArtifactError(
        f"artifact {name!r} {config} is not shipped: no complete {final.name} in {' or '.join(places)}.{stale} "
        f"{_SHIP_HINT}"
    )


def _build(entry: _Entry, config: dict[str, Any], material: dict[str, Any], key: str, final: Path) -> Path:
    """Build into a temporary folder beside ``final``; rename it into place when complete."""
    if not _builds_allowed:
        raise _not_shipped(entry.name, material["config"], final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".tmp-{final.name}-*"):  # left by a killed build a day ago
        try:
            if time.time() - stale.stat().st_mtime > 86400:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        start = time.time()
        entry.build_fn(tmp, **material["config"])
        manifest = {
            "name": entry.name,
            "key": key,
            "format_version": FORMAT_VERSION,
            "version": entry.version,
            "config": material["config"],
            "depends_on": material["depends_on"],
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "build_seconds": round(time.time() - start, 3),
            "files": _file_list(tmp),
        }
        # The manifest is written last: a folder without one is never taken for a finished artifact.
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; a shared cache should be readable
        try:
            os.rename(tmp, final)  # atomic; fails if another builder got there first
        except OSError:
            if _problem(final, key) is None:
                return final  # a concurrent builder won: use its (equivalent) artifact
            _remove_tree(final)
            os.rename(tmp, final)
        return final
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def locate(name: str, *, build: bool = True, **config: Any) -> Path | None:
    """The folder of a complete artifact ``name``/``config``: shipped, cached, or (``build=True``)
    freshly built into the cache. ``None`` if it does not exist and ``build=False``; :class:`ArtifactError`
    if it would have to be built while builds are forbidden (:func:`allow_builds`, a graded notebook)."""
    entry = _entry(name)
    try:
        material = _key_material(entry, config)
    except ArtifactError as err:  # e.g. its builder's source is not here to be hashed
        if _builds_allowed:
            raise
        raise ArtifactError(f"artifact {name!r} {config} cannot be found: {err}. {_SHIP_HINT}") from err
    key = _digest(material)
    folder = f"{name}-{key[:16]}"
    for root in shipped_roots():
        shipped = root / folder
        if shipped.exists():
            why = _problem(shipped, key)
            if why is None:
                return shipped
            _note(f"the shipped artifact {shipped} is incomplete or corrupt ({why}); skipping it.")
    cached = cache_root() / folder
    if cached.exists():
        why = _problem(cached, key)
        if why is None:
            return cached
        _note(f"the cached artifact {cached} is incomplete or corrupt ({why}); rebuilding it.")
        _remove_tree(cached)
    if not build:
        return None
    return _build(entry, config, material, key, cached)


def path(name: str, **config: Any) -> Path:
    """The folder of artifact ``name`` with ``config`` (built first if needed)."""
    found = locate(name, build=True, **config)
    assert found is not None
    return found


def get(name: str, **config: Any) -> Any:
    """Artifact ``name`` built with ``config``, loaded: from ``./artifacts``, else the cache, else built.

    Keyword arguments update the registered defaults. A folder its load function cannot read is
    reported and rebuilt once; a second failure raises :class:`ArtifactError`.
    """
    entry = _entry(name)
    folder = path(name, **config)
    full = _full_config(entry, config)
    try:
        return entry.load_fn(folder, **full)
    except Exception as err:  # noqa: BLE001 - any failure to read means the folder is unusable
        material = _key_material(entry, config)
        key = _digest(material)
        cached = cache_root() / f"{name}-{key[:16]}"
        if folder == cached:
            _note(f"could not load the cached artifact {folder} ({type(err).__name__}: {err}); rebuilding it.")
            _remove_tree(folder)
        else:
            _note(f"could not load the shipped artifact {folder} ({type(err).__name__}: {err}); "
                  "using the cache instead.")
        if cached.exists() and (folder == cached or _problem(cached, key) is not None):
            _remove_tree(cached)
        rebuilt = cached if cached.exists() else _build(entry, config, material, key, cached)
        try:
            return entry.load_fn(rebuilt, **full)
        except Exception as err2:  # noqa: BLE001
            raise ArtifactError(
                f"artifact {name!r} was rebuilt in {rebuilt} but still cannot be loaded "
                f"({type(err2).__name__}: {err2}); its build and load functions disagree"
            ) from err2


# ----------------------------------------------------------------------------- release & cleanup


def ship(dest: str | Path, names: Iterable[str], **config: Any) -> list[Path]:
    """Copy the artifacts ``names`` (built first where missing) into ``dest/artifacts/``.

    A notebook run with ``dest`` as its working directory then finds them without building.
    ``config`` applies to every name. Copies are atomic (temporary folder, then rename);
    an artifact already complete in ``dest`` is left as it is. Returns the shipped folders.
    """
    names = [names] if isinstance(names, str) else list(names)
    out_root = Path(dest) / "artifacts"
    out_root.mkdir(parents=True, exist_ok=True)
    shipped = []
    for name in names:
        entry = _entry(name)
        key = _digest(_key_material(entry, config))
        target = out_root / f"{name}-{key[:16]}"
        if target.exists() and _problem(target, key) is None:
            shipped.append(target)
            continue
        source = path(name, **config)
        if source.resolve() == target.resolve():
            shipped.append(target)
            continue
        tmp = out_root / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(source, tmp)
            if target.exists():
                _remove_tree(target)
            os.rename(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        shipped.append(target)
    _record_sources(out_root, names)
    return shipped


def _record_sources(out_root: Path, names: Iterable[str]) -> None:
    """Add the source digests of ``names`` to ``out_root/sources.json``: a release without the
    builders (or later notebooks' modules) computes the same keys from it."""
    path = out_root / SOURCES
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        recorded = {}
    for name in names:
        recorded.update({d: v for d, v in _dependency_digests(_entry(name)).items() if not d.startswith("artifact:")})
    tmp = path.with_name(f".{SOURCES}-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def clear(name: str | None = None) -> int:
    """Delete cached artifacts (all, or every build of ``name``); returns how many folders went.

    Never touches ``./artifacts`` (shipped with a release).
    """
    root = cache_root()
    if not root.is_dir():
        return 0
    pattern = re.compile(rf"(\.tmp-|\.trash-)?({re.escape(name) if name else '.+'})-[0-9a-f]{{16}}(-.*)?")
    removed = 0
    for p in sorted(root.iterdir()):
        if p.is_dir() and pattern.fullmatch(p.name):
            _remove_tree(p)
            removed += 1
    return removed
