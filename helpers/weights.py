"""GPT-2 small pretrained weights (``model.safetensors``, 548 MB) for the course.

:func:`gpt2_small_path` finds the file, in this order:

1. ``$GPT2_WEIGHTS``: a path you give (a file, or a folder holding ``model.safetensors``);
   used as is, without a checksum (it may be your own checkpoint).
2. The cache, ``$RLHF_COURSE_CACHE/gpt2/model.safetensors`` (default cache folder
   ``~/.cache/rlhf-course``). Its size is checked every time; its sha256 once, after which a
   ``model.safetensors.verified`` marker (the checksum, the file's size and mtime) is written
   next to it.
3. A download (``urllib``, no extra packages) from ``url=``, ``$GPT2_WEIGHTS_URL`` or the
   Hugging Face hub, streamed into a ``.part`` file, verified (size and sha256), then renamed
   into the cache. A partial or corrupt file never sits under the final name.

Every failure raises :class:`WeightsUnavailableError` saying what went wrong and what to do.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

GPT2_SMALL_URL = "https://huggingface.co/openai-community/gpt2/resolve/main/model.safetensors"
GPT2_SMALL_SHA256 = "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707"
GPT2_SMALL_SIZE = 548105171

FILENAME = "model.safetensors"
_CHUNK = 1 << 20
# Errors that mean "could not get the bytes from the server" (HTTPError is a URLError).
_NETWORK_ERRORS = (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, http.client.HTTPException)


class WeightsUnavailableError(RuntimeError):
    """The GPT-2 weights are neither given, cached nor downloadable; the message says what to do."""


def cache_dir() -> Path:
    """The course cache folder: ``$RLHF_COURSE_CACHE`` or ``~/.cache/rlhf-course``."""
    env = os.environ.get("RLHF_COURSE_CACHE", "")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rlhf-course"


def cached_gpt2_path() -> Path:
    """Where the verified GPT-2 small weights live in the cache (may not exist yet)."""
    return cache_dir() / "gpt2" / FILENAME


def sha256_file(path: str | Path, chunk_size: int = _CHUNK) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _marker_text(path: Path, sha256: str) -> str:
    # The checksum, plus size and modification time so that a replaced file is re-verified.
    st = path.stat()
    return f"{sha256} {st.st_size} {st.st_mtime_ns}"


def _how_to_fix(url: str, sha256: str | None, size: int | None) -> str:
    target = cached_gpt2_path()
    facts = f"     (sha256 {sha256}" if sha256 else ""
    if size is not None:
        facts += f", {size} bytes" if facts else f"     ({size} bytes"
    facts += ")\n" if facts else ""
    return (
        "Two ways out:\n"
        f"  1. Download model.safetensors on a machine with internet access from\n"
        f"       {url}\n"
        f"{facts}"
        "     copy it to this machine and point the course at it:\n"
        "       export GPT2_WEIGHTS=/path/to/model.safetensors\n"
        "     (or, in a notebook, os.environ['GPT2_WEIGHTS'] = '/path/to/model.safetensors').\n"
        f"  2. Or place the file at the cache path {target}\n"
        "     (the cache folder can be moved with RLHF_COURSE_CACHE)."
    )


def _from_env() -> Path | None:
    given = os.environ.get("GPT2_WEIGHTS", "")
    if not given:
        return None
    path = Path(given).expanduser()
    if path.is_dir() and (path / FILENAME).is_file():
        return path / FILENAME
    if path.is_file():
        return path
    what = "is a folder without model.safetensors in it" if path.is_dir() else "does not exist"
    raise WeightsUnavailableError(
        f"GPT2_WEIGHTS is set to {given!r}, but that path {what}. Point GPT2_WEIGHTS at the "
        "GPT-2 small model.safetensors file, or unset it to use the course cache / download."
    )


def _discard(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _from_cache(path: Path, sha256: str | None, size: int | None) -> Path | None:
    """The cached file if it is good; a bad one (wrong size or checksum) is deleted."""
    if not path.is_file():
        return None
    marker = _marker(path)
    if size is not None and path.stat().st_size != size:
        _discard(path, marker)
        return None
    if sha256 is None:
        return path
    try:
        if marker.read_text().strip() == _marker_text(path, sha256):
            return path
    except OSError:
        pass
    if sha256_file(path) != sha256:
        _discard(path, marker)
        return None
    marker.write_text(_marker_text(path, sha256) + "\n")
    return path


def _download(url: str, dest: Path, sha256: str | None, size: int | None, timeout: float) -> None:
    from helpers.runtime import progress

    dest.parent.mkdir(parents=True, exist_ok=True)
    if size is not None:
        free = shutil.disk_usage(dest.parent).free
        if free < size:
            raise WeightsUnavailableError(
                f"Not enough disk space in {dest.parent} for the GPT-2 weights: need {size} bytes, "
                f"{free} free. Free some space or set RLHF_COURSE_CACHE to another folder.\n"
                + _how_to_fix(url, sha256, size)
            )
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    part = Path(tmp_name)
    digest = hashlib.sha256()
    received = 0
    total: int | None = None
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                request = urllib.request.Request(url, headers={"User-Agent": "rlhf-course/1.0"})
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    announced = response.headers.get("Content-Length")
                    total = int(announced) if announced and announced.isdigit() else size
                    if size is not None and announced and announced.isdigit() and int(announced) != size:
                        raise WeightsUnavailableError(
                            f"{url} serves {announced} bytes, but the expected model.safetensors has "
                            f"{size} bytes; this is not the right file.\n" + _how_to_fix(url, sha256, size)
                        )
                    with progress(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                                  desc="GPT-2 small weights") as bar:
                        while chunk := response.read(_CHUNK):
                            out.write(chunk)
                            digest.update(chunk)
                            received += len(chunk)
                            bar.update(len(chunk))
            except _NETWORK_ERRORS as err:
                if isinstance(err, urllib.error.HTTPError):
                    reason = str(err)  # "HTTP Error 404: Not Found"
                    err.close()  # it holds the connection open
                else:
                    reason = getattr(err, "reason", None) or err
                raise WeightsUnavailableError(
                    f"Could not download the GPT-2 small weights: the hub could not be reached at {url} "
                    f"({type(err).__name__}: {reason}).\n" + _how_to_fix(url, sha256, size)
                ) from err
        expected = size if size is not None else total
        if expected is not None and received != expected:
            raise WeightsUnavailableError(
                f"The download from {url} gave {received} bytes, expected {expected} (connection "
                "lost?); the partial file was deleted. Try again later.\n" + _how_to_fix(url, sha256, size)
            )
        got = digest.hexdigest()
        if sha256 is not None and got != sha256:
            raise WeightsUnavailableError(
                f"Checksum mismatch for the file downloaded from {url}: expected sha256 {sha256}, "
                f"got {got}. The downloaded file was deleted.\n" + _how_to_fix(url, sha256, size)
            )
        os.chmod(part, 0o644)  # mkstemp makes it owner-only; a shared cache should be readable
        os.replace(part, dest)  # atomic on one file system: dest is complete or absent
    finally:
        _discard(part)
    if sha256 is not None:
        _marker(dest).write_text(_marker_text(dest, sha256) + "\n")


def gpt2_small_path(
    *,
    download: bool = True,
    url: str | None = None,
    sha256: str | None = GPT2_SMALL_SHA256,
    size: int | None = GPT2_SMALL_SIZE,
    timeout: float = 30.0,
) -> Path:
    """Path of GPT-2 small's ``model.safetensors``: ``$GPT2_WEIGHTS``, else the verified cache,
    else downloaded (unless ``download=False``) from ``url`` / ``$GPT2_WEIGHTS_URL`` / the hub.

    ``sha256``/``size`` (``None`` skips a check) describe the expected file; ``timeout`` is the
    socket timeout in seconds. Raises :class:`WeightsUnavailableError` with instructions.
    """
    given = _from_env()
    if given is not None:
        return given
    dest = cached_gpt2_path()
    cached = _from_cache(dest, sha256, size)
    if cached is not None:
        return cached
    source = url or os.environ.get("GPT2_WEIGHTS_URL", "") or GPT2_SMALL_URL
    if not download:
        raise WeightsUnavailableError(
            f"The GPT-2 small weights are not in the cache ({dest}) and download=False.\n"
            + _how_to_fix(source, sha256, size)
        )
    _download(source, dest, sha256, size, timeout)
    return dest


__all__ = [
    "GPT2_SMALL_SHA256",
    "GPT2_SMALL_SIZE",
    "GPT2_SMALL_URL",
    "WeightsUnavailableError",
    "cache_dir",
    "cached_gpt2_path",
    "gpt2_small_path",
    "sha256_file",
]
