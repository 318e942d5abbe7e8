"""The partners file: which EHRs the service exchanges priorities with, and how.

Checked against ``partners.schema.json`` at start-up; a bad file stops the service with file,
line and path, like a bad mapping or profile.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema

from service.exchange.destinations import Destination
from service.mapping.files import MappingError, MappingFile, read_yaml, schema_problems

SCHEMA_PATH = Path(__file__).with_name("partners.schema.json")
AUTH_TYPES = ("none", "bearer", "smart-backend-services")


class PartnerConfigError(ValueError):
    """The partners file cannot be used; the message says where."""


@dataclass(frozen=True)
class Auth:
    """How the service authenticates to a partner."""

    type: str = "none"  # none, bearer, smart-backend-services
    token: str | None = None
    client_id: str | None = None
    token_url: str | None = None
    private_key_file: Path | None = None
    algorithm: str | None = None
    scope: str = "system/*.cruds"


@dataclass(frozen=True)
class Partner:
    """One EHR endpoint: what is sent to it and what is pulled from it."""

    name: str
    base_url: str
    auth: Auth = Auth()
    send_types: tuple[str, ...] = ()
    send_profiles: tuple[str, ...] = ()
    patient_identifier_systems: tuple[str, ...] = ()
    receive_types: tuple[str, ...] = ()
    timeout_seconds: float = 10.0
    # local: only what this instance originated is sent; any: what partners sent is relayed
    send_origin: str = "local"
    # the patient's document for changes of Goals, Observations and Lists: "summary" (our "What
    # matters to me" DocumentReference, to partners that take no such writes) or "ips" (the
    # IPS 2.0.0 document of $summary, as a Bundle or wrapped in a DocumentReference)
    send_document: str = "summary"

    @property
    def destination(self) -> str:
        """The outbox destination of this partner."""
        return Destination.partner(self.name).format()

    def sends(self, type_: str, resource: dict[str, Any] | None) -> bool:
        """Whether a change of this resource type (and profile) is for this partner."""
        if type_ not in self.send_types:
            return False
        if not self.send_profiles or resource is None:
            return True
        claimed = (resource.get("meta") or {}).get("profile") or []
        return any(profile in claimed for profile in self.send_profiles)

    def knows_patient(self, patient: dict[str, Any]) -> tuple[str, str] | None:
        """The first of the patient's identifiers in one of this partner's systems, if any."""
        for identifier in patient.get("identifier") or []:
            if not isinstance(identifier, dict):
                continue
            system, value = identifier.get("system"), identifier.get("value")
            if not isinstance(system, str) or not isinstance(value, str):
                continue
            if not self.patient_identifier_systems or system in self.patient_identifier_systems:
                return system, value
        return None


@cache
def schema() -> dict[str, Any]:
    """The JSON Schema of the partners file."""
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return loaded


def load_partners(path: Path | None) -> tuple[Partner, ...]:
    """Read and check the partners file (None: no partners)."""
    if path is None:
        return ()
    try:
        content, lines = read_yaml(path)
    except MappingError as exc:
        raise PartnerConfigError(str(exc)) from exc
    located = MappingFile(path, content if isinstance(content, dict) else {}, lines)
    problems = (
        schema_problems(schema(), located, _message)
        if isinstance(content, dict)
        else [f"{path.name}:1 must hold a mapping with the key partners"]
    )
    if problems:
        raise PartnerConfigError("\n".join(problems))
    partners = []
    seen: set[str] = set()
    bases: dict[str, str] = {}
    for number, item in enumerate(located.content["partners"]):
        if item["name"] in seen:
            raise PartnerConfigError(
                f"{located.where(f'partners[{number}].name')}: the name {item['name']!r} is used "
                "twice"
            )
        seen.add(item["name"])
        # one server listed twice would be sent every change twice, the two deliveries racing
        base = _comparable(item["base_url"])
        if base in bases:
            raise PartnerConfigError(
                f"{located.where(f'partners[{number}].base_url')}: {item['base_url']} is the "
                f"server partner {bases[base]!r} already names"
            )
        bases[base] = item["name"]
        partners.append(_partner(item, path.parent, located.where(f"partners[{number}].auth")))
    return tuple(partners)


def _comparable(url: str) -> str:
    """A base URL as two entries for one server would spell it alike: scheme and host in lower
    case, no default port, no trailing slash."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    port = f":{parts.port}" if parts.port is not None and parts.port != default else ""
    return f"{parts.scheme.lower()}://{host}{port}{parts.path.rstrip('/')}"


def _message(error: jsonschema.ValidationError) -> str:
    """A schema error as an integration engineer reads it."""
    if error.validator == "oneOf" and isinstance(error.instance, dict):
        choices = error.schema.get("oneOf", []) if isinstance(error.schema, dict) else []
        if choices and all(set(choice) == {"required"} for choice in choices):
            return "needs exactly one of " + ", ".join(c["required"][0] for c in choices)
        kind = error.instance.get("type")
        if kind not in AUTH_TYPES:
            return f"auth.type must be one of {', '.join(AUTH_TYPES)}, not {kind!r}"
        for sub in error.context or []:
            index = sub.relative_schema_path[0] if sub.relative_schema_path else None
            branch = choices[index] if isinstance(index, int) else {}
            if branch.get("properties", {}).get("type", {}).get("const") == kind:
                return f"auth of type {kind}: {_message(sub)}"
        return f"auth of type {kind} needs its own keys only: {error.message}"
    if error.validator == "additionalProperties":
        return str(error.message).replace("Additional properties are not allowed", "unknown key")
    return str(error.message)


def _partner(item: dict[str, Any], folder: Path, where: str) -> Partner:
    raw = item.get("auth") or {"type": "none"}
    token = raw.get("token")
    if raw["type"] == "bearer" and token is None:
        token = os.environ.get(raw["token_env"])
        if not token:
            raise PartnerConfigError(f"{where}: the variable {raw['token_env']} is not set")
    key_file = None
    if raw["type"] == "smart-backend-services":
        key_file = Path(raw["private_key_file"])
        key_file = key_file if key_file.is_absolute() else folder / key_file
        if not key_file.is_file():
            raise PartnerConfigError(f"{where}.private_key_file: no file {key_file}")
    auth = Auth(
        type=raw["type"],
        token=token,
        client_id=raw.get("client_id"),
        token_url=raw.get("token_url"),
        private_key_file=key_file,
        algorithm=raw.get("algorithm"),
        scope=raw.get("scope", "system/*.cruds"),
    )
    send = item.get("send") or {}
    return Partner(
        name=item["name"],
        base_url=item["base_url"].rstrip("/"),
        auth=auth,
        send_types=tuple(send.get("types", ())),
        send_profiles=tuple(send.get("profiles", ())),
        patient_identifier_systems=tuple(send.get("patient_identifier_systems", ())),
        receive_types=tuple((item.get("receive") or {}).get("types", ())),
        send_origin=send.get("origin", "local"),
        send_document=send.get("document", "summary"),
        timeout_seconds=float(item.get("timeout_seconds", 10.0)),
    )
