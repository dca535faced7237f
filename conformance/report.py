"""A pytest plugin that records each check's outcome and prints a per-port, per-clause report.

A clause passes when every check proving it passed; fails when a check naming it in a
``ContractViolation`` failed (or a check declaring it failed without naming a clause);
is skipped when the checks proving it were skipped, with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, TextIO

from distributed_agents.conformance.catalog import Check
from distributed_agents.conformance.clauses import CLAUSES, PORTS
from distributed_agents.core.redaction import redact_url

__all__ = ["ReportPlugin"]

_CLAUSE_IN_MESSAGE = re.compile(r"\[([a-z_]+\.[a-z-]+)\]")


@dataclass
class Outcome:
    """What happened to one check."""

    check: Check
    status: str  # passed | failed | skipped
    message: str = ""
    named: set[str] = field(default_factory=set)


class ReportPlugin:
    """Collects outcomes through pytest hooks; ``render`` writes the report."""

    def __init__(self) -> None:
        self.outcomes: dict[str, Outcome] = {}
        self._checks: dict[str, Check] = {}

    def pytest_itemcollected(self, item: Any) -> None:
        check = getattr(getattr(item, "obj", None), "conformance_check", None)
        if check is not None:
            self._checks[item.nodeid] = check

    def pytest_runtest_logreport(self, report: Any) -> None:
        check = self._checks.get(report.nodeid)
        if check is None or (report.when != "call" and report.outcome == "passed"):
            return
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.outcomes[report.nodeid] = Outcome(check, "skipped", reason.removeprefix("Skipped: "))
        elif report.failed:
            text = str(report.longrepr)
            named = set(_CLAUSE_IN_MESSAGE.findall(text)) & set(CLAUSES)
            summary = next((line for line in text.splitlines() if "ContractViolation:" in line), text.splitlines()[-1] if text else "")
            self.outcomes[report.nodeid] = Outcome(check, "failed", summary.split("ContractViolation: ")[-1].strip(), named)
        elif report.when == "call":
            self.outcomes[report.nodeid] = Outcome(check, "passed")

    @property
    def failed(self) -> bool:
        """Whether any check failed."""
        return any(o.status == "failed" for o in self.outcomes.values())

    def clause_status(self) -> dict[str, tuple[str, str]]:
        """Each clause's (status, note)."""
        result: dict[str, tuple[str, str]] = {}
        for clause_id in CLAUSES:
            proving = [o for o in self.outcomes.values() if clause_id in o.check.clauses]
            failing = [o for o in self.outcomes.values() if o.status == "failed" and (clause_id in o.named or (not o.named and clause_id in o.check.clauses))]
            if failing:
                result[clause_id] = ("FAIL", failing[0].message)
            elif not proving:
                result[clause_id] = ("NOT RUN", "no selected check proves it")
            elif all(o.status == "skipped" for o in proving):
                result[clause_id] = ("SKIP", proving[0].message)
            elif any(o.status == "passed" for o in proving):
                result[clause_id] = ("PASS", "")
            else:
                result[clause_id] = ("UNCONFIRMED", "its checks failed on another clause first")
        return result

    def render(self, out: TextIO, url: str, profile: str) -> None:
        """Write the report to ``out``."""
        statuses = self.clause_status()
        out.write(f"\nConformance report for {redact_url(url)} (profile {profile})\n")
        for port in PORTS:
            out.write(f"\n{port}\n")
            for clause_id, clause in CLAUSES.items():
                if clause.port != port:
                    continue
                status, note = statuses[clause_id]
                out.write(f"  {status:<11} {clause_id:<38} {clause.text}\n")
                if note and status != "PASS":
                    out.write(f"              -> {note}\n")
        counts = {s: sum(1 for v in statuses.values() if v[0] == s) for s in ("PASS", "FAIL", "SKIP", "UNCONFIRMED", "NOT RUN")}
        checks = {s: sum(1 for o in self.outcomes.values() if o.status == s) for s in ("passed", "failed", "skipped")}
        out.write("\nclauses: " + ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n) + "\n")
        out.write("checks: " + ", ".join(f"{n} {s}" for s, n in checks.items()) + "\n")
