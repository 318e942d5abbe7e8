"""The validator the FHIR core uses: base R4 rules, extensions, and profiles.

``validate`` answers the base question (is this FHIR R4 at all: 400 when not);
``validate_profiles`` answers the profile question (does it meet every profile it claims in
``meta.profile``, the one asked for, and the ones configuration requires for its type: 422 when
not). Callers decide what to do with the issues.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.errors import Issue
from service.validation.bundle_rules import bundle_issues
from service.validation.profile_validation import ProfileValidator
from service.validation.profiles import ProfileError, ProfileRegistry
from service.validation.questionnaire import QuestionnaireValidator, Resolver
from service.validation.structure import StructureValidator
from service.validation.vital_signs import vital_sign_profile

_FAILED = ("error", "fatal")


class ResourceValidator:
    """Validate resources against the base definitions and the registry's profiles."""

    def __init__(
        self,
        registry: ProfileRegistry,
        invariants: bool = False,
        required_profiles: Mapping[str, tuple[str, ...]] | None = None,
        unknown_extensions: str = "warning",
        compiled_invariants: bool = True,
    ) -> None:
        self.registry = registry
        self.invariants = invariants
        self.structure = StructureValidator(
            registry.definitions, invariants=invariants, compiled=compiled_invariants
        )
        self.profiles = ProfileValidator(registry, unknown_extensions, compiled_invariants)
        self.required = dict(required_profiles or {})
        self.questionnaires = QuestionnaireValidator(registry.definitions)
        # the profiles folder's conformance resources, by canonical URL (and url|version)
        self._local: dict[str, dict[str, Any]] = {}
        for item in registry.files:
            url = item.resource.get("url")
            if isinstance(url, str):
                self._local.setdefault(url, item.resource)
                if isinstance(item.resource.get("version"), str):
                    self._local[f"{url}|{item.resource['version']}"] = item.resource
        for type_, urls in self.required.items():
            for url in urls:
                if self.profiles.profile_type(url) != type_:
                    raise ProfileError(f"required profile {url} is not a known profile of {type_}")

    def validate(self, resource: Any, expected_type: str | None = None) -> list[Issue]:
        """The base R4 issues of ``resource`` (structure, formats, required bindings); with
        invariants, also the Bundle rules of bundle.html that no invariant expresses."""
        issues = self.structure.validate(resource, expected_type)
        if (
            self.invariants
            and isinstance(resource, dict)
            and resource.get("resourceType") == "Bundle"
        ):
            issues += bundle_issues(resource)
        return issues

    def resolve(self, type_: str, canonical: str, fallback: Resolver | None = None) -> Any:
        """A conformance resource by canonical: the profiles folder first, then ``fallback``."""
        found = self._local.get(canonical)
        if found is not None and found.get("resourceType") == type_:
            return found
        return fallback(type_, canonical) if fallback is not None else None

    def validate_profiles(
        self, resource: Any, profile: str | None = None, resolve: Resolver | None = None
    ) -> list[Issue]:
        """Extension and profile issues: claimed, asked-for and required profiles, and for a
        QuestionnaireResponse its Questionnaire (found in the profiles folder, contained, or
        by ``resolve``: the server's store)."""
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            return []
        issues = self.profiles.validate_extensions(resource)
        type_ = resource["resourceType"]
        if type_ == "QuestionnaireResponse":
            issues += self._questionnaire_issues(resource, resolve)
        meta = resource.get("meta")
        claimed = meta.get("profile", []) if isinstance(meta, dict) else []
        claimed = [c for c in claimed if isinstance(c, str)] if isinstance(claimed, list) else []
        checked: set[str] = set()
        for index, url in enumerate(claimed):
            canonical = url.split("|", 1)[0]
            if canonical == f"http://hl7.org/fhir/StructureDefinition/{type_}":
                continue  # the base definition: already checked
            if not self.profiles.knows(canonical):
                issues.append(
                    Issue(
                        "warning",
                        "not-supported",
                        f"The profile {url} claimed in meta.profile is not known to this server, "
                        "so the resource was not checked against it",
                        (f"{type_}.meta.profile[{index}]",),
                    )
                )
                continue
            checked.add(canonical)
            issues += self.profiles.validate(resource, canonical)
        if profile is not None:
            canonical = profile.split("|", 1)[0]
            if canonical == f"http://hl7.org/fhir/StructureDefinition/{type_}":
                pass
            elif not self.profiles.knows(canonical):
                issues.append(
                    Issue(
                        "error",
                        "not-supported",
                        f"The profile {profile} is not known to this server; known profiles of "
                        f"{type_}: {', '.join(self.registry.profiles_of(type_)) or 'none'}",
                    )
                )
            elif canonical not in checked:
                checked.add(canonical)
                issues += self.profiles.validate(resource, canonical)
        if self.invariants:
            # $validate and the CLI, as the reference validator; a write checks a vital-signs
            # profile when the resource claims it
            issues += self._vital_signs(resource, checked)
        required = self.required.get(type_, ())
        if required and not checked.intersection(required):
            issues += self._required(resource, type_, required)
        return issues

    def _vital_signs(self, resource: dict[str, Any], checked: set[str]) -> list[Issue]:
        """observation-vitalsigns.html: an Observation with a vital-sign code meets the core
        profile of that sign, claimed or not (said in an information issue, as the reference
        validator does)."""
        found = vital_sign_profile(resource)
        if found is None or found[0] in checked or not self.profiles.knows(found[0]):
            return []
        url, code = found
        checked.add(url)
        note = Issue(
            "information",
            "informational",
            f"Checked against the profile {url}, which the FHIR specification requires of "
            f"Observations with the LOINC code {code}",
            ("Observation.code",),
        )
        # a rule the profile states on an element and again on its slice is reported once
        return [note, *dict.fromkeys(self.profiles.validate(resource, url))]

    def _questionnaire_issues(
        self, response: dict[str, Any], resolve: Resolver | None
    ) -> list[Issue]:
        questionnaire, issues = self.questionnaires.find(
            response, lambda t, c: self.resolve(t, c, resolve)
        )
        if questionnaire is not None:
            issues += self.questionnaires.validate(response, questionnaire)
        return issues

    def _required(self, resource: dict[str, Any], type_: str, urls: tuple[str, ...]) -> list[Issue]:
        """Issues unless ``resource`` meets one of the required profiles."""
        first: list[Issue] | None = None
        for url in urls:
            found = self.profiles.validate(resource, url)
            if not any(i.severity in _FAILED for i in found):
                return found
            first = found if first is None else first
        lead = Issue(
            "error",
            "processing",
            f"Every {type_} stored here must meet "
            + (urls[0] if len(urls) == 1 else "one of " + ", ".join(urls)),
            (type_,),
        )
        return [lead, *(first or [])]

    def supported_profiles(self, type_: str) -> list[str]:
        """The profiles of ``type_`` this server can check (for the CapabilityStatement)."""
        return self.registry.profiles_of(type_)
