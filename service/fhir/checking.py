"""Checking what comes in: resource types and ids, resources against R4 and their profiles,
JSON Patch documents, and the ``$validate`` operation.

Nothing here touches the store; a look-up a profile needs (a Questionnaire named by a
QuestionnaireResponse) is made through the ``find`` callable the caller passes, which reads
in the caller's open transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

import jsonpatch

from service.errors import (
    BadRequest,
    FhirError,
    InvalidResource,
    Issue,
    MethodNotAllowed,
    NotSupported,
    Unprocessable,
)
from service.fhir.conformance_resources import CONFORMANCE_TYPES
from service.fhir.model import SUPPORTED_TYPES, parse_json
from service.fhir.results import Result, operation_outcome
from service.validation.structure import is_valid_id

Find = Callable[[str, str], dict[str, Any] | None]


class Validator(Protocol):
    """Checks a resource and returns every problem found."""

    def validate(self, resource: Any, expected_type: str | None = None) -> list[Issue]:
        """Return the base R4 issues of ``resource``; errors make it unacceptable (400)."""

    def validate_profiles(
        self,
        resource: Any,
        profile: str | None = None,
        resolve: Callable[[str, str], dict[str, Any] | None] | None = None,
    ) -> list[Issue]:
        """Return the extension and profile issues of ``resource`` (errors: 422); ``resolve``
        finds the conformance resources it names (a QuestionnaireResponse's Questionnaire)."""

    def supported_profiles(self, type_: str) -> list[str]:
        """The profiles of ``type_`` the validator knows."""


def check_type(type_: str) -> None:
    """Refuse resource types this server does not store (404 not-supported; 405 for the
    read-only conformance resources of the profiles folder)."""
    if type_ in CONFORMANCE_TYPES:
        raise MethodNotAllowed(
            f"{type_} resources come from the profiles folder and are read-only here: "
            "read and search them"
        )
    if type_ not in SUPPORTED_TYPES:
        raise NotSupported(
            f"Resource type {type_!r} is not supported here; this server stores "
            + ", ".join(SUPPORTED_TYPES),
        )


def check_id(id_: str) -> None:
    """Refuse ids that are not valid FHIR ids."""
    if not is_valid_id(id_):
        raise BadRequest(f"{id_!r} is not a valid FHIR id (1-64 of A-Z a-z 0-9 - .)")


def check_resource(
    validator: Validator, resource: Any, type_: str, find: Find, return_warnings: bool
) -> tuple[Issue, ...]:
    """Raise for a resource that may not be stored; return its warnings.

    Base R4 problems give 400 (InvalidResource); a profile the resource claims or that
    configuration requires for its type, when not met, gives 422 (Unprocessable).
    """
    issues = validator.validate(resource, type_)
    _refuse_errors(issues, InvalidResource, f"The {type_} is not valid FHIR R4", return_warnings)
    issues += profile_issues(validator, resource, type_, None, find)
    _refuse_errors(issues, Unprocessable, f"The {type_} does not meet its profile", return_warnings)
    if not return_warnings:
        return ()
    return tuple(i for i in issues if i.severity == "warning")


def _refuse_errors(
    issues: list[Issue], error: type[FhirError], lead: str, return_warnings: bool
) -> None:
    errors = [i for i in issues if i.severity in ("error", "fatal")]
    if errors:
        raise error(
            f"{lead}: {errors[0].diagnostics}"
            + (f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""),
            issues=issues if return_warnings else errors,
        )


def profile_issues(
    validator: Validator,
    resource: dict[str, Any],
    type_: str,
    profile: str | None,
    find: Find,
) -> list[Issue]:
    """Profile issues of a resource, or of each resource a Bundle carries."""
    if type_ != "Bundle" or not isinstance(resource.get("entry"), list):
        return validator.validate_profiles(resource, profile, find)
    entries = resource["entry"]
    shell = {**resource, "entry": [without_resource(e) for e in entries]}
    issues = validator.validate_profiles(shell, profile, find)
    for index, entry in enumerate(entries):
        inner = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(inner, dict) or not isinstance(inner.get("resourceType"), str):
            continue
        prefix = f"Bundle.entry[{index}].resource"
        kind = inner["resourceType"]
        for issue in validator.validate_profiles(inner, None, find):
            moved = tuple(
                prefix + e[len(kind) :] if e == kind or e.startswith(kind + ".") else e
                for e in issue.expression
            )
            issues.append(replace(issue, expression=moved or (prefix,)))
    return issues


def validate_operation(
    thorough: Validator,
    read: Callable[[str, str], Result],
    find: Find,
    type_: str,
    body: Any,
    id_: str | None = None,
    url_profiles: Sequence[str] = (),
) -> Result:
    """$validate: https://hl7.org/fhir/R4/resource-operation-validate.html.

    The answer is an OperationOutcome (200) listing every issue, or one information issue
    when there is none. ``mode`` create, update and delete are honoured. Profiles asked for
    in the URL (``?profile=``) or in the Parameters are checked; one this server does not
    know is an error, never skipped. Bundles (of any type) are validated too, each entry's
    resource with the profiles it claims.
    """
    if type_ != "Bundle":
        check_type(type_)
    resource, profile, mode = _validate_input(body)
    asked = list(dict.fromkeys([*url_profiles, *([profile] if profile else [])]))
    issues: list[Issue] = []
    if mode == "delete":
        if id_ is None:
            raise BadRequest("mode=delete needs the resource's id in the URL")
        check_id(id_)
        read(type_, id_)  # 404 or 410 if there is nothing to delete
        issues.append(Issue("information", "informational", f"{type_}/{id_} can be deleted"))
        return Result(200, body=operation_outcome(issues))
    if resource is None:
        if id_ is None:
            raise BadRequest("$validate needs a resource, as the body or a 'resource' parameter")
        check_id(id_)
        stored = read(type_, id_).stored
        assert stored is not None
        resource = parse_json(stored.content or "{}")
    issues += thorough.validate(resource, type_)
    if isinstance(resource, dict) and resource.get("resourceType") == type_:
        issues += profile_issues(thorough, resource, type_, asked[0] if asked else None, find)
        for one in asked[1:]:
            issues += [
                i for i in thorough.validate_profiles(resource, one, find) if i not in issues
            ]
    if mode == "update" or (id_ is not None and isinstance(resource, dict)):
        body_id = resource.get("id") if isinstance(resource, dict) else None
        if id_ is not None and body_id != id_:
            issues.append(
                Issue(
                    "error",
                    "invalid",
                    f"An update of {type_}/{id_} needs a resource with id {id_!r}",
                    (f"{type_}.id",),
                )
            )
    if not issues:
        issues.append(Issue("information", "informational", "No issues were found"))
    return Result(200, body=operation_outcome(issues))


def without_resource(entry: Any) -> Any:
    """A Bundle entry without its resource (the shell the Bundle itself is checked with)."""
    if isinstance(entry, dict) and "resource" in entry:
        return {k: v for k, v in entry.items() if k != "resource"}
    return entry


def _validate_input(body: Any) -> tuple[dict[str, Any] | None, str | None, str | None]:
    """Split a $validate body into the resource, the profile and the mode asked for."""
    if not isinstance(body, dict):
        raise BadRequest("The $validate body must be a resource or a Parameters resource")
    if body.get("resourceType") != "Parameters":
        return body, None, None
    parameters = body.get("parameter", [])
    if not isinstance(parameters, list):
        raise BadRequest(
            "Parameters.parameter must be an array", expression=("Parameters.parameter",)
        )
    resource: dict[str, Any] | None = None
    profile: str | None = None
    mode: str | None = None
    for index, parameter in enumerate(parameters):
        where = (f"Parameters.parameter[{index}]",)
        if not isinstance(parameter, dict):
            raise BadRequest("Each parameter must be an object", expression=where)
        name = parameter.get("name")
        if name == "resource":
            if not isinstance(parameter.get("resource"), dict):
                raise BadRequest("The 'resource' parameter needs a resource", expression=where)
            resource = parameter["resource"]
        elif name == "profile":
            value = parameter.get("valueUri", parameter.get("valueCanonical"))
            if not isinstance(value, str):
                raise BadRequest("The 'profile' parameter needs a valueUri", expression=where)
            profile = value
        elif name == "mode":
            value = parameter.get("valueCode")
            if value not in ("create", "update", "delete"):
                raise BadRequest("mode must be create, update or delete", expression=where)
            mode = value
    return resource, profile, mode


def parse_json_patch(body: Any) -> jsonpatch.JsonPatch:
    if not isinstance(body, list):
        raise BadRequest("A JSON Patch document must be a JSON array of operations")
    for index, op in enumerate(body):
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise BadRequest(f"JSON Patch operation {index} needs 'op' and 'path'")
        if op["op"] not in ("add", "remove", "replace", "move", "copy", "test"):
            raise BadRequest(f"JSON Patch operation {index} has an unknown op {op['op']!r}")
    try:
        return jsonpatch.JsonPatch(body)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise BadRequest(f"The JSON Patch document is not valid: {exc}") from exc
