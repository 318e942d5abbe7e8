"""``whatmatters map check|reload|test|run``: a mapping checked, reloaded into a running service,
run against its golden tests, or run over an input file."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from service.config import Config


def _map_check(config: Config, args: argparse.Namespace) -> int:
    from service.fhir.mapping_paths import target_problems
    from service.mapping.files import MappingError, load_mapping

    failed = 0
    for name in args.files:
        try:
            mapping = load_mapping(Path(name))
        except MappingError as exc:
            print(str(exc))
            failed += 1
            continue
        problems = target_problems(mapping)
        if problems:
            print("\n".join(problems))
            failed += 1
            continue
        rules = len(mapping.content["rules"])
        tests = len(mapping.content.get("tests", []))
        print(f"{name}: mapping {mapping.name!r} is valid ({rules} rules, {tests} tests)")
    return 1 if failed else 0


def _map_reload(config: Config, args: argparse.Namespace) -> int:
    import os
    import signal

    from service import load_mappings
    from service.mapping.files import MappingError

    try:
        mappings = load_mappings(config)
    except MappingError as exc:
        print(str(exc))
        print("The mappings folder is broken: a running service keeps the set it has.")
        return 1
    names = ", ".join(sorted(mappings.files)) or "none"
    pid = args.pid
    if pid is None and config.pid_file is not None and config.pid_file.exists():
        text = config.pid_file.read_text().strip()
        pid = int(text) if text.isdigit() else None
    if pid is None:
        print(
            f"{config.mappings_dir}: a running service serves these from its next $ingest: "
            f"{names} (SIGHUP to `whatmatters serve`, or --pid, restarts its workers on them)"
        )
        return 0
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        print(f"whatmatters: no service to reload at pid {pid} ({exc.strerror})")
        return 1
    print(f"{config.mappings_dir}: sent SIGHUP to the service (pid {pid}); it now serves: {names}")
    return 0


def _map_test(config: Config, args: argparse.Namespace) -> int:
    from service import load_mappings
    from service.mapping.files import load_mapping
    from service.mapping.golden import run_golden
    from service.validation.definitions import Definitions
    from service.validation.profiles import ProfileRegistry
    from service.validation.validator import ResourceValidator

    loaded = load_mappings(config)
    mappings = (
        [load_mapping(Path(f)) for f in args.files] if args.files else list(loaded.files.values())
    )
    validator = ResourceValidator(ProfileRegistry.load(Definitions.shared(), config.profiles_dir))
    failed = total = 0
    for mapping in mappings:
        for result in run_golden(mapping, loaded.questionnaires, loaded.conceptmaps):
            total += 1
            problems = [result.detail] if result.detail else []
            for number, resource in enumerate(result.outputs, start=1):
                issues = validator.validate(resource) + validator.validate_profiles(resource)
                problems += [
                    f"resource {number} is not valid: {', '.join(i.expression)}: {i.diagnostics}"
                    for i in issues
                    if i.severity in ("error", "fatal")
                ]
            if result.passed and not problems:
                print(f"PASS {result.where} {result.mapping}: {result.name}")
                continue
            failed += 1
            print(f"FAIL {result.where} {result.mapping}: {result.name}")
            for problem in problems:
                print(f"     {problem}")
    print(f"{total - failed} passed, {failed} failed")
    return 1 if failed or not total else 0


def _map_run(config: Config, args: argparse.Namespace) -> int:
    from service import build_fhir_service, load_mappings
    from service.errors import FhirError
    from service.fhir.actor import Actor
    from service.fhir.ingest import ingest
    from service.mapping.files import load_mapping

    mapping = load_mapping(Path(args.mapping))
    source = Path(args.input)
    size = max(source.stat().st_size, 1)
    read = 0

    def lines() -> Iterator[str]:
        nonlocal read
        with source.open(encoding="utf-8-sig", newline="") as handle:
            for line in handle:
                read += len(line.encode("utf-8"))
                yield line

    def bar(records: int) -> None:
        done = min(read, size) if mapping.content["source"]["format"] == "csv" else size
        width = 30
        filled = width * done // size
        sys.stderr.write(
            f"\r{mapping.name} [{'#' * filled}{'.' * (width - filled)}] "
            f"{100 * done // size}% {records} records"
        )
        sys.stderr.flush()

    streamed = mapping.content["source"]["format"] == "csv"
    data = lines() if streamed else source.read_bytes()
    loaded = load_mappings(config)
    fhir = build_fhir_service(config)
    try:
        result, report = ingest(
            fhir,
            Actor.system(),
            mapping,
            data,
            loaded.questionnaires,
            dry_run=args.dry_run,
            progress=bar,
            conceptmaps=loaded.conceptmaps,
        )
    except FhirError as error:
        sys.stderr.write("\n")
        issues = error.outcome_issues()
        for issue in issues:
            print(f"error: {issue.diagnostics}")
        print(f"{len(issues)} errors; nothing written")
        return 1
    finally:
        fhir.store.close()
    sys.stderr.write("\n")
    # a dry run's stdout is its JSON alone (for jq and the like); what it found goes to stderr
    told = sys.stderr if args.dry_run else sys.stdout
    if args.dry_run:
        print(json.dumps(result.body, ensure_ascii=False, indent=2, default=str))
    for issue in report.errors:
        print(f"error: {issue.diagnostics}", file=told)
    for issue in report.summary():
        print(
            issue.diagnostics + (" (dry run: nothing written)" if args.dry_run else ""), file=told
        )
    return 1 if report.error_count else 0  # a run with errors is not a success
