"""The core imports nothing outside the standard library, and nothing from adapters."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import distributed_agents.core as core_package

CORE = pathlib.Path(core_package.__file__).parent


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_core_modules_import_only_the_standard_library_and_core() -> None:
    allowed = set(sys.stdlib_module_names) | {"__future__"}
    offenders = []
    files = sorted(CORE.rglob("*.py"))
    assert len(files) >= 10, "the installed core package looks incomplete"
    for path in files:
        for line, name in _imports(path):
            root = name.split(".")[0]
            if root == "distributed_agents":
                if not name.startswith("distributed_agents.core"):
                    offenders.append(f"{path.name}:{line} imports {name}")
            elif root not in allowed:
                offenders.append(f"{path.name}:{line} imports {name}")
    assert offenders == []


def test_core_runs_a_workflow_without_pluggy_or_extras_loaded() -> None:
    """Importing the core pulls in no third-party module at all."""
    code = (
        "import sys\n"
        "import distributed_agents.core.graph, distributed_agents.core.orchestrator, distributed_agents.core.worker\n"
        "roots = {m.split('.')[0] for m in sys.modules if not m.startswith('_')}\n"
        "third = sorted(roots - set(sys.stdlib_module_names) - {'distributed_agents'})\n"
        "print(third)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    # The package facade (distributed_agents/__init__) loads pluggy for backend discovery; nothing else.
    assert out.stdout.strip() in ("['pluggy']", "[]")
