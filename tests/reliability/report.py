"""The reliability report: what the suite sent, broke and checked. Each test writes its part
to .reliability/parts/ (so parallel test processes can share a run); the summary merges them
into .reliability/report.json and prints one line."""

from __future__ import annotations

import json
import re
import shutil
import threading
from collections import Counter
from pathlib import Path

FOLDER = Path(".reliability")
PARTS = FOLDER / "parts"


class Tally:
    """One test's counts and faults (thread-safe), written to its part file."""

    def __init__(self, test: str) -> None:
        self.test = test
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.faults: list[str] = []

    def add(self, **counts: int) -> None:
        """Add counts: requests, bad_inputs, acknowledged_writes, lost_writes, status_5xx."""
        with self._lock:
            self.counts.update(counts)

    def fault(self, what: str) -> None:
        """Record one injected fault."""
        with self._lock:
            self.faults.append(what)

    def save(self) -> None:
        """Write this test's part of the report."""
        PARTS.mkdir(parents=True, exist_ok=True)
        body = {"test": self.test, "counts": dict(self.counts), "faults": self.faults}
        name = re.sub(r"[^\w.-]+", "_", self.test)
        (PARTS / f"{name}.json").write_text(json.dumps(body, indent=2), encoding="utf-8")


def clear() -> None:
    """Forget the parts of an earlier run."""
    shutil.rmtree(PARTS, ignore_errors=True)


def merge() -> str | None:
    """Merge the parts into report.json; return the summary line (None without parts)."""
    if not PARTS.is_dir():
        return None
    parts = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(PARTS.glob("*.json"))]
    if not parts:
        return None
    total: Counter[str] = Counter()
    faults: list[str] = []
    for part in parts:
        total.update(part["counts"])
        faults += [f"{part['test']}: {f}" for f in part["faults"]]
    report = {
        "requests_sent": total["requests"],
        "faults_injected": len(faults),
        "bad_inputs_tried": total["bad_inputs"],
        "acknowledged_writes": total["acknowledged_writes"],
        "acknowledged_writes_lost": total["lost_writes"],
        "server_errors": total["status_5xx"],
        "unavailable_503": total["status_503"],
        "faults": faults,
        "tests": {p["test"]: p["counts"] for p in parts},
    }
    (FOLDER / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    return (
        f"requests sent {report['requests_sent']}, faults injected {report['faults_injected']}, "
        f"bad inputs tried {report['bad_inputs_tried']}, acknowledged writes "
        f"{report['acknowledged_writes']}, acknowledged writes lost "
        f"{report['acknowledged_writes_lost']}, 5xx answers {report['server_errors']} "
        f"(besides {report['unavailable_503']} 503s while the database was down)"
    )
