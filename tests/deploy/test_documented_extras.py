"""Every EXTRAS value the README and deploy files give installs what the manifests' settings need.

A manifest that sets DA_METRICS_PORT starts the Prometheus exporter, which needs the
``metrics`` extra: an image built without it crash-loops at start. So every documented
``EXTRAS`` (a ``--build-arg``, a compose default, a setting in prose) must include the
extras that the environment variables set anywhere in ``deploy/`` require.
"""
from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"

# An environment variable a manifest may set -> the extra the process then imports.
NEEDS = {"DA_METRICS_PORT": "metrics", "DA_OTEL": "otel"}


def _manifest_texts() -> dict[str, str]:
    files = [*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")]
    return {str(path.relative_to(ROOT)): path.read_text() for path in files}


def _required_extras() -> set[str]:
    required = set()
    for text in _manifest_texts().values():
        for variable, extra in NEEDS.items():
            # "- name: DA_METRICS_PORT" (Kubernetes) or "DA_METRICS_PORT:" / "DA_METRICS_PORT=" (compose)
            if re.search(rf"^\s*(?:-\s*name:\s*)?{variable}\b\s*[:=]?", text, re.MULTILINE):
                required.add(extra)
    return required


def _documented_extras() -> list[tuple[str, str]]:
    sources = {"README.md": (ROOT / "README.md").read_text(), **_manifest_texts(),
               "deploy/Dockerfile": (DEPLOY / "Dockerfile").read_text()}
    found = []
    for where, text in sources.items():
        for value in re.findall(r"\bEXTRAS(?:=|:\s*\$\{EXTRAS:-)([a-z,]+)", text):
            found.append((where, value))
    return found


def test_the_manifests_need_the_metrics_extra() -> None:
    assert "metrics" in _required_extras()  # the worker and orchestrator manifests export metrics


def test_every_documented_extras_value_installs_what_the_manifests_need() -> None:
    documented = _documented_extras()
    assert any(where == "README.md" for where, _ in documented)
    assert any("llm" in value.split(",") for _, value in documented)
    required = _required_extras()
    for where, value in documented:
        missing = required - set(value.split(","))
        assert not missing, f"{where}: EXTRAS={value} lacks {sorted(missing)}, which the manifests' settings need"
