"""deploy/Dockerfile: its entry point and command are real, and its build stage copies enough.

Docker is not available to the tests, so the file is read with ``dockerfile-parse``;
the build stage's ``pip wheel`` is run on a folder holding exactly what its COPY lines
copy, which proves the wheel builds from them and carries every package and the command.
"""

from __future__ import annotations

import io
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser
from support.deploy_files import DEPLOY, ROOT, cli_commands, find

DOCKERFILE = DEPLOY / "Dockerfile"


def _parsed() -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO(DOCKERFILE.read_bytes()))


def _exec_form(instruction: str) -> Any:
    """The JSON (exec form) value of the last ``instruction`` (ENTRYPOINT, CMD) of the final stage."""
    (value, *_) = [i["value"] for i in reversed(_stages()[-1]) if i["instruction"] == instruction]
    return json.loads(value)


def _stages() -> list[list[dict[str, Any]]]:
    stages: list[list[dict[str, Any]]] = []
    for instruction in _parsed().structure:
        if instruction["instruction"] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_entrypoint_and_command_are_the_cli() -> None:
    entrypoint, cmd = _exec_form("ENTRYPOINT"), _exec_form("CMD")
    assert entrypoint == ["distributed-agents"]
    assert entrypoint[0] in _pyproject()["project"]["scripts"]
    assert cmd == ["worker"] and cmd[0] in cli_commands()


def test_runs_as_the_user_the_manifests_require() -> None:
    final = _stages()[-1]
    (user,) = [i["value"] for i in final if i["instruction"] == "USER"]
    for _, deployment in find("Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        assert spec["securityContext"] == {"runAsNonRoot": True, "runAsUser": int(user)}


def test_app_dir_default_exists_and_extras_are_the_packages() -> None:
    final = _stages()[-1]
    args = dict(i["value"].split("=", 1) for i in final if i["instruction"] == "ARG")
    assert (ROOT / args["APP_DIR"]).is_dir()
    assert set(args["EXTRAS"].split(",")) <= set(_pyproject()["project"]["optional-dependencies"])


@pytest.mark.timeout(300)
def test_the_build_stage_builds_the_wheel_from_what_it_copies(tmp_path: pathlib.Path) -> None:
    build = _stages()[0]
    source = tmp_path / "src"
    source.mkdir()
    for instruction in build:
        if instruction["instruction"] != "COPY":
            continue
        *paths, target = instruction["value"].split()
        for path in paths:
            origin = ROOT / path
            where = source / (path if target.endswith("/") or target == "./" else target)
            if origin.is_dir():
                shutil.copytree(origin, where, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy(origin, where)
    (run,) = [i["value"] for i in build if i["instruction"] == "RUN"]
    assert run.startswith("pip wheel ") and "--no-deps" in run
    wheels = tmp_path / "wheels"
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir",
                           "--wheel-dir", str(wheels), str(source)], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = wheels.glob("distributed_agents-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    packages = _pyproject()["tool"]["setuptools"]["packages"]
    for package in packages:
        assert f"{package.replace('.', '/')}/__init__.py" in names, package
    assert "distributed-agents = distributed_agents.cli:main" in entry_points
    final = _stages()[-1]
    (install,) = [i["value"] for i in final if i["instruction"] == "RUN" and "pip install" in i["value"]]
    assert "/wheels/distributed_agents-*.whl" in install


def test_the_command_is_where_the_readme_runs_it() -> None:
    # The official Python images install console scripts (pip as root) into /usr/local/bin,
    # the path the README's "kubectl exec ... -- /usr/local/bin/distributed-agents" uses.
    final = _stages()[-1]
    assert re.fullmatch(r"python:\$\{PYTHON_VERSION\}-slim", final[0]["value"])
    readme = (ROOT / "README.md").read_text()
    assert "-- /usr/local/bin/distributed-agents submit" in readme
