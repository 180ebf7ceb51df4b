"""The shape of the house: a pure core, the database beside it, two edges that never meet.

The pure modules (link finding and rewriting, tokens, execution rules, bot rules, hot-click
arithmetic) import neither SQLAlchemy nor Flask nor aiosmtpd; the relay never imports Flask; the
core never imports either edge. Checked twice: what importing a module actually loads (in a fresh
interpreter), and every import statement of the source, lazy ones inside functions included.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: The modules of the core that do no I/O and need no framework.
PURE = [
    "hotclicks",
    "hotclicks.bots",
    "hotclicks.devices",
    "hotclicks.enums",
    "hotclicks.errors",
    "hotclicks.executions",
    "hotclicks.heat",
    "hotclicks.links",
    "hotclicks.mime",
    "hotclicks.networks",
    "hotclicks.privacy",
    "hotclicks.rewrite",
    "hotclicks.senders",
    "hotclicks.settings",
    "hotclicks.splice",
    "hotclicks.tokens",
]
FRAMEWORKS = ("sqlalchemy", "flask", "aiosmtpd")


def _modules(package: str) -> list[str]:
    base = ROOT / package
    return sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1] if path.name == "__init__.py"
                 else path.relative_to(ROOT).with_suffix("").parts)
        for path in base.rglob("*.py")
        if path.name != "__main__.py"  # runs the program when imported
    )


def _loaded_after_importing(modules: list[str]) -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def _imported_names(package: str) -> set[tuple[str, str]]:
    """(file, top-level package) of every absolute import in ``package``'s source."""
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {(str(path.relative_to(ROOT)), alias.name.split(".")[0]) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add((str(path.relative_to(ROOT)), node.module.split(".")[0]))
    return found


def test_every_pure_module_is_listed() -> None:
    """A new module of hotclicks/ outside db/ is pure unless said otherwise here."""
    assert [m for m in _modules("hotclicks") if not m.startswith("hotclicks.db")] == PURE


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_load_no_framework(module: str) -> None:
    loaded = _loaded_after_importing([module])
    assert not loaded & set(FRAMEWORKS), f"importing {module} loads {sorted(loaded & set(FRAMEWORKS))}"


def test_the_relay_never_loads_flask() -> None:
    loaded = _loaded_after_importing(_modules("smtp_relay"))
    assert "flask" not in loaded and "flask_hotclicks" not in loaded


def test_the_core_never_loads_an_edge() -> None:
    loaded = _loaded_after_importing(_modules("hotclicks"))
    assert not loaded & {"flask", "flask_hotclicks", "smtp_relay", "aiosmtpd"}


def test_no_import_statement_crosses_the_lines() -> None:
    pure_files = {f"hotclicks/{m.split('.')[1] if '.' in m else '__init__'}.py" for m in PURE}
    crossings = [
        (path, name)
        for path, name in _imported_names("hotclicks")
        if name in ("flask", "flask_hotclicks", "smtp_relay", "aiosmtpd")
        or (path in pure_files and name in FRAMEWORKS)
    ]
    crossings += [(path, name) for path, name in _imported_names("smtp_relay") if name in ("flask", "flask_hotclicks")]
    assert not crossings
