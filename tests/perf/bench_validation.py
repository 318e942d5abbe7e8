"""Validation benchmark: WMTY resources validated against their profiles on one core, and the
start-up cost of loading every definition and profile, each beside a baseline in the same run.

Run:  .venv/bin/python -m tests.perf.bench_validation
Options: --seconds 3 (per measurement) --rounds 3 (best of) --cpu (rates per CPU second of
this process, for a machine others are loading: wall-clock rates then measure the load)

Rates (resources per second) are measured in this process, which uses one core. The baseline
is a JSON round trip of the same resource (``json.loads(json.dumps(r))``), a cost every write
pays anyway, so the ratio says how many round trips one validation costs on this machine.
Start-up is measured in fresh interpreters: loading the definitions and profiles and building
the validators, against a baseline interpreter that only imports the same modules. Results are
printed as a Markdown table and written to .benchmarks/validation.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.validation.definitions import Definitions
from service.validation.profiles import ProfileRegistry
from service.validation.validator import ResourceValidator
from tests.validation.mutations import BASE, example

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ("wmty-statement", "wmty-personal-goal", "wmty-priorities-list")
_IMPORTS = (
    "from service.validation.definitions import Definitions\n"
    "from service.validation.profiles import ProfileRegistry\n"
    "from service.validation.validator import ResourceValidator\n"
    "from pathlib import Path\n"
    "import time\n"
)
_LOAD = (
    "start = time.perf_counter()\n"
    "registry = ProfileRegistry.load(Definitions.shared(), Path('profiles'))\n"
    "validator = ResourceValidator(registry)\n"
    "for url in registry.local:\n"
    "    validator.profiles.tree(url)\n"
    "for type_ in ('Observation', 'Goal', 'List', 'Patient', 'Extension'):\n"
    "    registry.definitions.model(type_)\n"
    "registry.definitions.structure_definition(\n"
    "    'http://hl7.org/fhir/StructureDefinition/goal-acceptance')\n"
    "print(time.perf_counter() - start)\n"
)


def rate(
    work: Callable[[], object],
    seconds: float,
    rounds: int,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Best-of-``rounds`` calls per second of ``work`` over ``seconds`` each (of ``clock``)."""
    best = 0.0
    for _ in range(rounds):
        count = 0
        start = clock()
        deadline = start + seconds
        while clock() < deadline:
            for _ in range(50):
                work()
            count += 50
        best = max(best, count / (clock() - start))
    return best


def startup(code: str, rounds: int) -> float:
    """Best wall time of a fresh interpreter running ``code`` (which prints its own seconds)."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
        )
        total = time.perf_counter() - start
        inner = result.stdout.strip()
        times.append(float(inner) if inner else total)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpu", action="store_true", help="rates per CPU second, not wall")
    args = parser.parse_args(argv)
    registry = ProfileRegistry.load(Definitions.shared(), ROOT / "profiles")
    write_path = ResourceValidator(registry)
    thorough = ResourceValidator(registry, invariants=True)
    rows: list[dict[str, Any]] = []
    for name in PROFILES:
        resource = example(name)
        url = BASE + name
        for validator, label in ((write_path, "write path"), (thorough, "$validate")):
            issues = validator.validate(resource) + validator.validate_profiles(resource, url)
            assert not [i for i in issues if i.severity == "error"], issues

            def validate(
                v: ResourceValidator = validator, r: Any = resource, u: str = url
            ) -> object:
                return v.validate(r) + v.validate_profiles(r, u)

            def baseline(r: Any = resource) -> object:
                return json.loads(json.dumps(r))

            clock = time.process_time if args.cpu else time.perf_counter
            measured = rate(validate, args.seconds, args.rounds, clock)
            base = rate(baseline, args.seconds, args.rounds, clock)
            rows.append(
                {
                    "profile": name,
                    "mode": label,
                    "per_second": round(measured),
                    "baseline_per_second": round(base),
                    "ratio": round(base / measured, 1),
                }
            )
    load = startup(_IMPORTS + _LOAD, args.rounds)
    imports_only = startup(_IMPORTS + "print('')\n", args.rounds)
    print("| Profile | Mode | Validations/s (1 core) | JSON round trips/s | Cost in round trips |")
    print("| --- | --- | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['profile']} | {row['mode']} | {row['per_second']} | "
            f"{row['baseline_per_second']} | {row['ratio']} |"
        )
    print()
    print(
        f"Start-up: loading every definition and profile {load:.2f} s; a fresh interpreter "
        f"importing the same modules takes {imports_only:.2f} s, so a validator is ready "
        f"{load + imports_only:.2f} s after the process starts"
    )
    out = ROOT / ".benchmarks"
    out.mkdir(exist_ok=True)
    (out / "validation.json").write_text(
        json.dumps(
            {"rows": rows, "startup_seconds": load, "imports_seconds": imports_only}, indent=2
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
