"""Binding strength rules (https://hl7.org/fhir/R4/terminologies.html#strength), shared by the
base structure walk and the profile walk.

- ``required``: the code SHALL come from the value set (error); text alone does not meet it.
- ``extensible``: a code from the value set SHALL be used when one fits; a code outside it is a
  warning when its code system is one the value set draws on and we hold completely (a code from
  another system may be the legitimate extension, which nothing here can judge).
- A value set we cannot expand (it draws on SNOMED CT, LOINC, ...) is never taken as met: the
  binding is reported "not checked" (warning), once per element and value set; LOINC and SNOMED
  CT codes still get their format and check-digit test, and media types (BCP-13) their syntax.
"""

from __future__ import annotations

import re
from typing import Any

from service.errors import Issue
from service.validation.definitions import Definitions
from service.validation.terminology import code_format_problem

_MIME_VALUE_SET = "http://hl7.org/fhir/ValueSet/mimetypes"
# RFC 6838 section 4.2 type/subtype, with RFC 2045 parameters
_MIME_TOKEN = r"[A-Za-z0-9!#$&^_.+-]+"  # noqa: S105 (a media-type token, not a secret)
_MIME = re.compile(
    rf"{_MIME_TOKEN}/{_MIME_TOKEN}(\s*;\s*{_MIME_TOKEN}=(\"[^\"]*\"|{_MIME_TOKEN}))*"
)


def coded_pairs(value: Any) -> tuple[list[tuple[str | None, str]], bool] | None:
    """The (system, code) pairs of a code, Coding, CodeableConcept or Quantity, and whether it
    carries text; None when the value is not coded (its shape is reported elsewhere)."""
    if isinstance(value, str):
        return ([(None, value)], False) if value else None
    if not isinstance(value, dict):
        return None
    codings = value.get("coding", []) if "coding" in value or "text" in value else [value]
    if not isinstance(codings, list):
        return None
    pairs = [
        (c.get("system") if isinstance(c.get("system"), str) else None, c["code"])
        for c in codings
        if isinstance(c, dict) and isinstance(c.get("code"), str)
    ]
    return pairs, "text" in value


def not_checked_message(path: str, url: str) -> str:
    """The one warning of a binding whose value set cannot be expanded here."""
    return (
        f"The binding of {path} to {url} was not checked: the value set is not held, or "
        "draws on a code system this server does not hold (SNOMED CT, LOINC, ...)"
    )


def binding_issues(
    definitions: Definitions,
    strength: str | None,
    url: str | None,
    value: Any,
    path: str,
    expr: str,
) -> list[Issue]:
    """The issues of ``value`` at ``expr`` against a binding of element ``path``. The caller
    keeps one "not checked" warning (code ``not-supported``) per element: see ``add_once``."""
    if strength not in ("required", "extensible") or not url:
        return []
    url = url.split("|", 1)[0]
    found = coded_pairs(value)
    if found is None:
        return []
    pairs, has_text = found
    allowed = definitions.expand(url)
    issues: list[Issue] = []
    if allowed is None:
        for system, code in pairs:
            problem = code_format_problem(system, code)
            if problem is not None:
                issues.append(Issue("error", "code-invalid", problem, (expr,)))
        if url == _MIME_VALUE_SET:
            for _, code in pairs:
                if _MIME.fullmatch(code) is None:
                    issues.append(
                        Issue(
                            "error",
                            "code-invalid",
                            f"{code!r} is not a media type (type/subtype, RFC 6838)",
                            (expr,),
                        )
                    )
            return issues
        if pairs:
            issues.append(
                Issue("warning", "not-supported", not_checked_message(path, url), (expr,))
            )
        return issues
    if not pairs:
        if strength == "required" and has_text:
            issues.append(
                Issue(
                    "error",
                    "code-invalid",
                    f"No code is given, and {path} requires one from {url}",
                    (expr,),
                )
            )
        return issues
    hit = any(
        (system, code) in allowed
        if system is not None
        else any(code == held for _, held in allowed)
        for system, code in pairs
    )
    if hit:
        return issues
    shown = ", ".join(f"{s}|{c}" if s else c for s, c in pairs)
    if strength == "required":
        message = (
            f"The code {pairs[0][1]!r} is not in the required value set {url}"
            if isinstance(value, str)
            else f"None of the codes ({shown}) is in the required value set {url} of {path}"
        )
        issues.append(Issue("error", "code-invalid", message, (expr,)))
        return issues
    drawn = {system for system, _ in allowed}
    terminology = definitions.terminology
    if any(s in drawn and terminology.complete(s) for s, _ in pairs if s is not None):
        issues.append(
            Issue(
                "warning",
                "code-invalid",
                f"{shown} is not in the value set {url}, which {path} should use when a "
                "code in it fits (extensible binding)",
                (expr,),
            )
        )
    return issues


def add_once(issues: list[Issue], found: list[Issue]) -> None:
    """Append ``found`` to ``issues``, a "not checked" warning only if not given already."""
    for issue in found:
        if issue.code == "not-supported" and any(
            i.code == "not-supported" and i.diagnostics == issue.diagnostics for i in issues
        ):
            continue
        issues.append(issue)
