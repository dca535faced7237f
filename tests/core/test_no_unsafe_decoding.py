"""Nothing read from a backend is ever unpickled or evaluated.

A scan of the sources of the core, the adapters (memory, Redis, NATS) and the facade:
no module imports a deserialiser that can run code (pickle, marshal, shelve, dill,
cloudpickle, jsonpickle, yaml) and none calls ``eval``, ``exec``, ``compile`` (the
builtin) or ``__import__``; the one decoder, ``codec.decode``, turns anything that is
not JSON (a pickle included) into ``PayloadDecodeError`` and runs nothing (Hypothesis).
"""

from __future__ import annotations

import ast
import os
import pathlib
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import distributed_agents
import distributed_agents.adapters
import distributed_agents.core
from distributed_agents.core import codec
from distributed_agents.core.errors import PayloadDecodeError

# The installed package's directories (an editable install maps each to its own tree).
SCANNED = [pathlib.Path(module.__file__ or "").resolve().parent
           for module in (distributed_agents.core, distributed_agents.adapters, distributed_agents)]
UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle", "jsonpickle", "yaml"}
UNSAFE_CALLS = {"eval", "exec", "compile", "__import__"}
EXAMPLES = 500 if os.environ.get("DA_TEST_PROFILE") == "thorough" else 60


def sources() -> list[pathlib.Path]:
    found = sorted({path for root in SCANNED for path in root.rglob("*.py")})
    assert len(found) > 40, f"expected the package's modules under {SCANNED}, found {len(found)}"
    return found


def unsafe_uses(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            names = []
        problems += [f"{path}:{node.lineno} imports {name}" for name in names
                     if name.split(".")[0] in UNSAFE_MODULES]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in UNSAFE_CALLS:
            problems.append(f"{path}:{node.lineno} calls {node.func.id}()")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "loads", "load") and isinstance(node.func.value, ast.Name) and node.func.value.id in UNSAFE_MODULES:
            problems.append(f"{path}:{node.lineno} calls {node.func.value.id}.{node.func.attr}()")
    return problems


def test_no_module_unpickles_or_evaluates() -> None:
    problems = [problem for path in sources() for problem in unsafe_uses(path)]
    assert problems == []


def test_the_scan_finds_what_it_looks_for(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nfrom marshal import loads\nx = eval('1')\nexec('y = 2')\npickle.loads(b'')\n")
    assert len(unsafe_uses(bad)) == 5


class _Boom:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (pathlib.Path.touch, ("/nonexistent-dir/should-never-be-created",))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_pickle_is_refused_as_not_json(protocol: int) -> None:
    with pytest.raises(PayloadDecodeError, match="not valid UTF-8 JSON"):
        codec.decode(pickle.dumps(_Boom(), protocol=protocol))


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_decode_returns_json_values_or_raises_payload_decode_error(data: bytes) -> None:
    try:
        value = codec.decode(data)
    except PayloadDecodeError:
        return
    assert codec.find_non_json(value) is None or isinstance(value, float)  # NaN/Infinity literals parse as floats
