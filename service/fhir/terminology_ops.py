"""The terminology operations over the value sets and code systems this server holds.

- ``ValueSet/$expand`` and ``ValueSet/[id]/$expand`` (https://hl7.org/fhir/R4/valueset-operation-expand.html):
  ``url`` (or the instance, or a ``valueSet`` resource in the Parameters), ``filter`` (words of
  the code or display, case ignored), ``offset`` and ``count``; answers the ValueSet with its
  ``expansion`` (``total``, ``offset``, the ``parameter`` used, ``contains``).
- ``ValueSet/$validate-code`` and ``ValueSet/[id]/$validate-code``
  (valueset-operation-validate-code.html): ``url``, and ``code`` + ``system`` (+ ``display``),
  a ``coding`` or a ``codeableConcept``; answers Parameters ``result``, ``message``, ``display``.
  A display that is not the concept's leaves the result true with a message, as the reference
  validator makes it a warning.
- ``CodeSystem/$lookup`` (codesystem-operation-lookup.html, type level only): ``system`` +
  ``code`` or a ``coding``; answers ``name``, ``version``, ``display``, ``abstract``,
  ``designation`` and ``property`` parts.

Parameters come from the query string (GET) or a Parameters body (POST), both at once allowed.
Errors are OperationOutcomes whose expression names the parameter: a missing or malformed
parameter is 400, an unknown value set, code system or code 404, and a value set we hold but
cannot expand (it draws on SNOMED CT, LOINC, ...) 422 ``not-supported``.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from service.errors import BadRequest, FhirError, Issue, NotFound, Unprocessable
from service.fhir.parameters import parameters_in, single_value
from service.fhir.results import Result
from service.validation.value_sets import Entry, Terminology, Verdict, is_abstract

OPERATIONS = ("$expand", "$validate-code", "$lookup")


class Params:
    """An operation's input parameters: the query string's and a Parameters body's together."""

    def __init__(self, query: Sequence[tuple[str, str]], body: Any) -> None:
        self._values: dict[str, list[Any]] = {}
        for name, value in query:
            if not name.startswith("_"):
                self._values.setdefault(name, []).append(value)
        if body is None:
            return
        for where, name, part in parameters_in(body, "a terminology operation"):
            found = single_value(part)
            if found is None:
                raise BadRequest(f"The parameter {name!r} needs exactly one value", (where,))
            self._values.setdefault(name, []).append(found[1])

    def one(self, name: str) -> Any:
        """The parameter's single value, or None; 400 when it is given more than once."""
        values = self._values.get(name, [])
        if len(values) > 1:
            raise BadRequest(f"The parameter {name!r} may be given once", (name,))
        return values[0] if values else None

    def text(self, name: str) -> str | None:
        """A string parameter (uri, code, string)."""
        value = self.one(name)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise BadRequest(f"The parameter {name!r} must be a non-empty string", (name,))
        return value

    def integer(self, name: str) -> int | None:
        """A non-negative integer parameter."""
        value = self.one(name)
        if value is None:
            return None
        if isinstance(value, str) and value.isdigit():
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        raise BadRequest(f"The parameter {name!r} must be a non-negative integer", (name,))

    def structure(self, name: str) -> dict[str, Any] | None:
        """A Coding, CodeableConcept or resource parameter (only in a Parameters body)."""
        value = self.one(name)
        if value is not None and not isinstance(value, dict):
            raise BadRequest(f"The parameter {name!r} must be given in a Parameters body", (name,))
        return value


def terminology_operation(
    terminology: Terminology,
    path: str,
    query: Sequence[tuple[str, str]],
    body: Any,
    id_: str | None,
) -> Result:
    """Run the operation that ends ``path`` (``$expand``, ``$validate-code`` or ``$lookup``)
    with the query's and the Parameters body's parameters, and give its answer."""
    operation = path.rsplit("/", 1)[-1]
    params = Params(query, body)
    if operation == "$lookup":
        return Result(200, body=_lookup(terminology, params))
    terminology, url = _value_set(terminology, params, id_)
    if operation == "$expand":
        return Result(200, body=_expand(terminology, url, params))
    return Result(200, body=_validate_code(terminology, url, params))


def _value_set(
    terminology: Terminology, params: Params, id_: str | None
) -> tuple[Terminology, str]:
    """The terminology to use and the canonical URL of the value set the operation is about."""
    inline = params.structure("valueSet")
    if id_ is not None:
        found = terminology.by_id("ValueSet", id_)
        if found is None:
            raise NotFound(f"This server holds no ValueSet with id {id_!r}")
        return terminology, str(found["url"])
    if inline is not None:
        if inline.get("resourceType") != "ValueSet":
            raise BadRequest("The valueSet parameter must be a ValueSet", ("valueSet",))
        url = str(inline.get("url") or "urn:inline:valueset")
        resources = ChainMap({"ValueSet|" + url: inline}, dict(terminology.resources))
        return Terminology(resources), url
    given = params.text("url")
    if given is None:
        raise BadRequest("The value set is missing: give url (or a valueSet resource)", ("url",))
    if terminology.value_set(given) is None:
        raise NotFound(f"This server holds no ValueSet {given}", ("url",))
    return terminology, given.split("|", 1)[0]


def _not_expandable(url: str) -> FhirError:
    return Unprocessable(
        "",
        issues=[
            Issue(
                "error",
                "not-supported",
                f"The value set {url} cannot be expanded here: it draws on a code system this "
                "server does not hold",
                ("url",),
            )
        ],
    )


def _expand(terminology: Terminology, url: str, params: Params) -> dict[str, Any]:
    entries = terminology.expand(url)
    if entries is None:
        raise _not_expandable(url)
    text = params.text("filter")
    offset = params.integer("offset") or 0
    count = params.integer("count")
    if text is not None:
        words = text.lower().split()
        entries = [
            e for e in entries if all(w in f"{e.code} {e.display or ''}".lower() for w in words)
        ]
    page = entries[offset:] if count is None else entries[offset : offset + count]
    used: list[dict[str, Any]] = [{"name": "url", "valueUri": url}]
    if text is not None:
        used.append({"name": "filter", "valueString": text})
    if count is not None:
        used.append({"name": "count", "valueInteger": count})
    if offset:
        used.append({"name": "offset", "valueInteger": offset})
    vs = terminology.value_set(url) or {}
    answer: dict[str, Any] = {
        k: vs[k] for k in ("id", "url", "version", "name", "title", "status") if k in vs
    }
    answer["resourceType"] = "ValueSet"
    answer.setdefault("status", "active")
    answer["expansion"] = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "total": len(entries),
        "offset": offset,
        "parameter": used,
        "contains": [_contains(e) for e in page],
    }
    return answer


def _contains(entry: Entry) -> dict[str, Any]:
    item: dict[str, Any] = {"system": entry.system}
    if entry.version:
        item["version"] = entry.version
    if entry.abstract:
        item["abstract"] = True
    item["code"] = entry.code
    if entry.display:
        item["display"] = entry.display
    return item


def _codings(params: Params) -> tuple[list[dict[str, Any]], str]:
    """The codings to validate and the name of the parameter they came from."""
    concept = params.structure("codeableConcept")
    if concept is not None:
        codings = concept.get("coding", [])
        if not isinstance(codings, list) or not codings:
            raise BadRequest("The codeableConcept has no coding", ("codeableConcept",))
        return [c for c in codings if isinstance(c, dict)], "codeableConcept"
    coding = params.structure("coding")
    if coding is not None:
        return [coding], "coding"
    code = params.text("code")
    if code is None:
        raise BadRequest("Give code (with system), coding or codeableConcept", ("code",))
    return [
        {"system": params.text("system"), "code": code, "display": params.text("display")}
    ], "code"


def _validate_code(terminology: Terminology, url: str, params: Params) -> dict[str, Any]:
    codings, where = _codings(params)
    verdicts: list[Verdict] = []
    for coding in codings:
        code = coding.get("code")
        if not isinstance(code, str) or not code:
            raise BadRequest(f"A code is missing in {where}", (where,))
        system = coding.get("system") if isinstance(coding.get("system"), str) else None
        display = coding.get("display") if isinstance(coding.get("display"), str) else None
        verdict = terminology.check_code(system, code, display, url)
        if verdict is None:
            raise _not_expandable(url)
        verdicts.append(verdict)
    valid = [v for v in verdicts if v.result]
    chosen = valid[0] if valid else verdicts[0]
    out: list[dict[str, Any]] = [{"name": "result", "valueBoolean": bool(valid)}]
    messages = [v.message for v in (valid if valid else verdicts) if v.message]
    if messages:
        out.append({"name": "message", "valueString": "; ".join(messages)})
    if chosen.display:
        out.append({"name": "display", "valueString": chosen.display})
    return {"resourceType": "Parameters", "parameter": out}


def _lookup(terminology: Terminology, params: Params) -> dict[str, Any]:
    coding = params.structure("coding")
    system = coding.get("system") if coding is not None else params.text("system")
    code = coding.get("code") if coding is not None else params.text("code")
    if not isinstance(system, str) or not system:
        raise BadRequest("The system is missing (system, or coding.system)", ("system",))
    if not isinstance(code, str) or not code:
        raise BadRequest("The code is missing (code, or coding.code)", ("code",))
    cs = terminology.code_system(system)
    if cs is None or not terminology.complete(system):
        raise NotFound(f"This server holds no code system {system}", ("system",))
    concept = terminology.concept(system, code)
    if concept is None:
        raise NotFound(f"The code {code!r} is not defined in the code system {system}", ("code",))
    out: list[dict[str, Any]] = [{"name": "name", "valueString": cs.get("name") or system}]
    if cs.get("version"):
        out.append({"name": "version", "valueString": cs["version"]})
    if concept.get("display"):
        out.append({"name": "display", "valueString": concept["display"]})
    out.append({"name": "abstract", "valueBoolean": is_abstract(concept)})
    for d in concept.get("designation", []):
        part = [{"name": "value", "valueString": d.get("value", "")}]
        if d.get("language"):
            part.insert(0, {"name": "language", "valueCode": d["language"]})
        if d.get("use"):
            part.insert(0, {"name": "use", "valueCoding": d["use"]})
        out.append({"name": "designation", "part": part})
    for p in concept.get("property", []):
        values = [{"name": k, k: v} for k, v in p.items() if k.startswith("value")]
        if values:
            value = values[0]
            key = next(k for k in value if k != "name")
            out.append(
                {
                    "name": "property",
                    "part": [
                        {"name": "code", "valueCode": p.get("code")},
                        {"name": "value", key: value[key]},
                    ],
                }
            )
    return {"resourceType": "Parameters", "parameter": out}
