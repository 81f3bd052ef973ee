"""The images' build context (issue 19, item 3): .dockerignore and .containerignore let through
exactly what the Containerfiles COPY, so a build from a working checkout never sends its .venv,
runs, caches or data."""

from __future__ import annotations

import fnmatch
from pathlib import Path

from tests.k8s.manifests import K8S, REPO_ROOT

IGNORE_FILES = (".dockerignore", ".containerignore")


def _rules(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _sent(relative: str, rules: list[str]) -> bool:
    """Whether a file at `relative` reaches the build (the last matching rule wins, as in docker's
    .dockerignore: a pattern matches the path or any folder above it)."""
    parts = relative.split("/")
    candidates = ["/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    sent = True
    for rule in rules:
        allow = rule.startswith("!")
        pattern = rule[1:] if allow else rule
        pattern = pattern.rstrip("/")
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(part, pattern[3:]) for part in parts)
        else:
            hit = any(fnmatch.fnmatch(candidate, pattern) for candidate in candidates)
        if hit:
            sent = allow
    return sent


def _copied_sources() -> list[str]:
    sources = []
    for name in ("coordinator.Containerfile", "edge.Containerfile"):
        for line in (K8S / "images" / name).read_text().splitlines():
            words = line.split()
            if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
                sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


def test_both_ignore_files_say_the_same():
    assert (REPO_ROOT / ".dockerignore").read_text() == (REPO_ROOT / ".containerignore").read_text()


def test_what_the_containerfiles_copy_is_sent_and_nothing_else_of_a_working_checkout():
    rules = _rules(REPO_ROOT / ".dockerignore")
    sources = _copied_sources()
    assert "k8s/images/coordinator-requirements.txt" in sources and "edge_client" in sources
    for source in sources:
        files = [p for p in (REPO_ROOT / source).rglob("*") if p.is_file()] if (REPO_ROOT / source).is_dir() else [
            REPO_ROOT / source]
        kept = [f for f in files if "__pycache__" not in f.parts]
        assert kept and all(_sent(str(f.relative_to(REPO_ROOT)), rules) for f in kept), source
    for kept_out in (".venv/lib/python3.11/site-packages/numpy/__init__.py", "uv.lock", "pyproject.toml",
                     "runs/synthetic/report.json",
                     ".git/HEAD", "tests/conftest.py", "bench/quality.py", ".ruff_cache/x",
                     "edge_client/__pycache__/pod.cpython-311.pyc", "build/lib/coordinator/up.py",
                     "k8s/base/kustomization.yaml"):
        assert not _sent(kept_out, rules), kept_out


def test_the_coordinator_image_runs_pyprojects_fedrec_entry_point():
    """The image installs the dependencies without the project (so a source change rebuilds only
    the small source layers) and writes `fedrec` itself: it must call what pyproject names."""
    import tomllib

    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["fedrec"].split(":")
    containerfile = (K8S / "images" / "coordinator.Containerfile").read_text()
    assert f"from {module} import {function}" in containerfile and f"sys.exit({function}())" in containerfile
