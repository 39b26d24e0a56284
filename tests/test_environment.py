"""requirements*.txt and environment.yml pin the same packages; torch is pinned to 2.13.0."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)$")


def pins(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-r"):
            continue
        m = PIN.match(line)
        assert m, f"every requirement must be pinned with ==, got {line!r}"
        out[m.group(1).lower()] = m.group(2)
    return out


def test_environment_yml_matches_requirements():
    runtime = pins((ROOT / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert pins(pip_section) == runtime
    assert "python=3.11" in env["dependencies"]


def test_test_requirements_extend_runtime():
    text = (ROOT / "requirements-test.txt").read_text()
    assert "-r requirements.txt" in text
    runtime = pins((ROOT / "requirements.txt").read_text().splitlines())
    test_only = pins(text.splitlines())
    assert not set(runtime) & set(test_only), "a package pinned twice can drift: pin it in one file"


def test_torch_pinned_to_local_cpu_wheel():
    assert pins((ROOT / "requirements.txt").read_text().splitlines())["torch"] == "2.13.0"
