"""The README and docs/ stay true to the code: modules, settings, paths and commands.

Fast and offline: the documents are read as text and checked against the source tree and
the settings classes; nothing is served.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import re
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

import services.settings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]
PACKAGES = ("services", "monitoring", "flows")
# Top-level folders whose paths the documents name; a path under one of them must exist.
PATH_ROOTS = ("services", "flows", "monitoring", "benchmarks", "tests", "deploy", "bentos")

_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
_PATH = re.compile(
    r"(?<![\w./-])((?:" + "|".join(PATH_ROOTS) + r")/[\w./*-]*)",
)
_PYTHON_M = re.compile(r"python3? -m ([\w.]+)")


def _modules() -> list[Path]:
    """Every module of the documented packages, ``__init__.py`` excluded."""
    found = []
    for top in PACKAGES:
        found += [p for p in (ROOT / top).rglob("*.py") if p.name != "__init__.py"]
    return sorted(p.relative_to(ROOT) for p in found)


def _names(text: str, name: str) -> bool:
    """Whether ``text`` names ``name`` as a whole path (not as part of a longer one)."""
    return re.search(rf"(?<![\w./]){re.escape(name)}(?![\w/]|\.\w)", text) is not None


@pytest.mark.parametrize("module", _modules(), ids=str)
def test_every_module_is_in_the_package_map(module: Path) -> None:
    text = ARCHITECTURE.read_text()
    dotted = ".".join(module.with_suffix("").parts)
    assert _names(text, module.as_posix()) or _names(text, dotted), (
        f"{module} is not in docs/architecture.md: add a line for it to the package map"
    )


def _settings_env_names() -> list[str]:
    """The environment variable of every field of every settings class."""
    names = []
    package = services.settings
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if not issubclass(cls, BaseSettings) or cls.__module__ != module.__name__:
                continue
            prefix = cls.model_config.get("env_prefix", "")
            names += [f"{prefix}{field}".upper() for field in cls.model_fields]
    return sorted(names)


def test_settings_are_found() -> None:
    names = _settings_env_names()
    assert "SERVEKIT_SHAPE" in names and "SERVEKIT_REDIS_URL" in names
    assert len(names) == len(set(names)), "two settings share an environment variable"


@pytest.mark.parametrize("env_name", _settings_env_names())
def test_every_setting_is_in_the_readme(env_name: str) -> None:
    text = README.read_text()
    found = re.search(rf"(?<![A-Z0-9_]){env_name}(?![A-Z0-9_])", text)
    assert found, f"{env_name} is not in README.md's Configuration tables"


def _mentioned_paths(document: Path) -> list[str]:
    """Repository paths named inside the document's code spans and code blocks."""
    paths = []
    for match in _CODE_SPAN.finditer(document.read_text()):
        paths += [p.rstrip(".") for p in _PATH.findall(match.group(2))]
    return sorted(set(paths))


def test_path_extraction() -> None:
    span = "`python benchmarks/serving.py --x` and `flows/recipes/` but not `a/services/x`"
    found = [p for m in _CODE_SPAN.finditer(span) for p in _PATH.findall(m.group(2))]
    assert found == ["benchmarks/serving.py", "flows/recipes/"]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_mentioned_paths_exist(document: Path) -> None:
    assert _mentioned_paths(document), f"{document.name} names no path: is the pattern wrong?"
    missing = []
    for path in _mentioned_paths(document):
        exists = any(ROOT.glob(path.rstrip("/"))) if "*" in path else (ROOT / path).exists()
        if not exists:
            missing.append(path)
    assert not missing, f"{document.name} names paths that do not exist: {missing}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_python_m_names_a_module(document: Path) -> None:
    for module in sorted(set(_PYTHON_M.findall(document.read_text()))):
        module = module.rstrip(".")
        assert importlib.util.find_spec(module) is not None, (
            f"{document.name}: `python -m {module}` names no importable module"
        )
