"""A partner's FHIR API as the partner channels use it: capability, look-ups, idempotent writes.

Each resource is written at the partner by conditional create or update on its identifier (or,
for types without one, its ``meta.source``), so a redelivery changes nothing. Before a write its
references are rewritten, through the one reference walker (``service.fhir.references``), to the
partner's own resources: a Patient by the identifier the partner knows it by, a resource the
partner holds by its id there, any other by its identifier. What the partner's
CapabilityStatement says and what its searches found are kept a short while.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from service.exchange.channels import Refused, Retry, Skipped, Waiting, check
from service.exchange.feed import is_local
from service.exchange.partner_client import Answer, PartnerClient
from service.exchange.partners import Partner
from service.fhir.interactions import FhirService
from service.fhir.model import (
    INSTANCE_EXTENSION,
    ORIGIN_TAG_SYSTEM,
    SUPPORTED_TYPES,
    instance_uri,
    origin_of,
)
from service.fhir.references import replace_references
from service.fhir.search_parser import escape_value
from service.storage import StoredResource
from service.storage.outbox import OutboxRow

URI_SYSTEM = "urn:ietf:rfc:3986"
NO_IDENTIFIER_TYPES = frozenset({"Provenance"})  # R4 gives them no identifier element


@dataclass(frozen=True)
class Capability:
    """What a partner's CapabilityStatement says it accepts, per resource type."""

    types: dict[str, dict[str, Any]]
    usable: bool = True  # False: no CapabilityStatement with a server rest part came back
    instance: str | None = None  # the partner's instance identifier, when it publishes one
    base: str | None = None  # implementation.url: the base the partner says it serves at

    def holds(self, type_: str) -> bool:
        """Whether the partner can hold resources of the type (it accepts writes of it)."""
        return self.writes(type_)

    def writes(self, type_: str) -> bool:
        """Whether the partner accepts creates of the type."""
        codes = {i.get("code") for i in self.types.get(type_, {}).get("interaction", [])}
        return "create" in codes or "update" in codes

    def updates(self, type_: str) -> bool:
        """Whether the partner accepts updates of the type (PUT)."""
        codes = {i.get("code") for i in self.types.get(type_, {}).get("interaction", [])}
        return "update" in codes

    def flag(self, type_: str, name: str) -> bool:
        """A conditional flag (conditionalCreate, conditionalUpdate) of the type."""
        value = self.types.get(type_, {}).get(name)
        return value is True or value in ("single", "multiple")


def capability_of(body: Any) -> Capability:
    """The server resources of a CapabilityStatement, the instance it names and its base.

    Anything but a CapabilityStatement with a server ``rest`` part (an empty Bundle, an HTML
    page, nothing) is not usable: without it nothing can be written there knowingly.
    """
    types: dict[str, dict[str, Any]] = {}
    if not isinstance(body, dict) or body.get("resourceType") != "CapabilityStatement":
        return Capability(types, usable=False)
    servers = [
        rest
        for rest in body.get("rest") or []
        if isinstance(rest, dict) and rest.get("mode", "server") == "server"
    ]
    for rest in servers:
        for resource in rest.get("resource") or []:
            if isinstance(resource, dict) and isinstance(resource.get("type"), str):
                types[resource["type"]] = resource
    implementation = body.get("implementation")
    implementation = implementation if isinstance(implementation, dict) else {}
    instance = None
    extensions = implementation.get("extension")
    for extension in extensions if isinstance(extensions, list) else []:
        if not isinstance(extension, dict) or extension.get("url") != INSTANCE_EXTENSION:
            continue
        value = extension.get("valueUri")
        if isinstance(value, str):
            instance = value.removeprefix("urn:uuid:")
    base = implementation.get("url")
    return Capability(
        types,
        usable=bool(servers),
        instance=instance,
        base=base.rstrip("/") if isinstance(base, str) else None,
    )


@dataclass(frozen=True)
class Target:
    """Where one row goes: the partner, its client and capability, and what is sent."""

    partner: Partner
    client: PartnerClient
    capability: Capability
    current: StoredResource  # the resource's current version here (maybe a deletion)


class PartnerApi:
    """The partners' FHIR APIs, with what their CapabilityStatements say and what their
    searches found, cached; shared by the partner channels of one worker."""

    def __init__(
        self,
        fhir: FhirService,
        partners: Mapping[str, Partner],
        base_url: str,
        clients: Callable[[Partner], PartnerClient],
        *,
        capability_ttl: float = 600.0,
        lookup_ttl: float = 300.0,
        learned: Callable[[Partner, str], None] | None = None,
    ) -> None:
        self.fhir = fhir
        self.partners = partners  # by destination
        self.base_url = base_url
        self.capability_ttl = capability_ttl
        self._clients = clients
        self._client_cache: dict[str, PartnerClient] = {}
        self._capabilities: dict[str, tuple[float, Capability]] = {}
        # what a partner's search found, kept a short while: a retry resumes where the last
        # attempt stopped instead of repeating every look-up, and a List whose items are all
        # known costs one request
        self.lookup_ttl = lookup_ttl
        self._found: dict[tuple[str, str, str, str], tuple[float, str]] = {}
        self._learned = learned
        self._lock = threading.Lock()

    @property
    def instance_id(self) -> str:
        """This installation's identifier, stamped on what it originates."""
        return self.fhir.instance_id

    def previous(self, row: OutboxRow) -> StoredResource | None:
        """The version before the row's (what a deletion deleted)."""
        stored: StoredResource | None = self.fhir.read_only(
            lambda tx: tx.resources.vread(row.res_type, row.res_id, row.version - 1)
        )
        return stored

    def prepare(self, row: OutboxRow) -> Target | None:
        """The partner, its client and capability and the resource's current version for a
        row (None: the resource is not here at all, nothing to send).

        Refused when the partner is gone from the partners file or publishes no usable
        CapabilityStatement; Skipped when the resource came from the partner's instance.
        """
        partner = self.partners.get(row.destination)
        if partner is None:
            raise Refused(f"{row.destination} is no longer in the partners file")
        client = self.client(partner)
        current = self.current(row.res_type, row.res_id)
        if current is None:
            return None
        capability = self.capability(client)
        if not capability.usable:
            raise Refused(
                f"{partner.name} has no usable CapabilityStatement at {partner.base_url}/metadata "
                f"(FHIR R4 http.html#capabilities); {row.res_type}/{row.res_id} is not sent to a "
                "server that does not say what it accepts"
            )
        self.not_back_to_origin(partner, capability, row, current)
        return Target(partner, client, capability, current)

    def not_back_to_origin(
        self, partner: Partner, capability: Capability, row: OutboxRow, current: StoredResource
    ) -> None:
        """A resource never goes back to the instance that originated it (by identity, not
        by URL: the partners file may name it by any alias)."""
        if capability.instance is None:
            return
        stored = current
        if current.deleted:
            before = self.previous(row)
            if before is None:
                return
            stored = before
        content = json.loads(stored.content or "{}")
        origin = origin_of(content) or self.instance_id
        if origin == capability.instance:
            raise Skipped(
                f"{row.res_type}/{row.res_id} came from {partner.name} (instance {origin}); "
                "it is not sent back"
            )

    def client(self, partner: Partner) -> PartnerClient:
        """The partner's client, made once."""
        with self._lock:
            if partner.name not in self._client_cache:
                self._client_cache[partner.name] = self._clients(partner)
            return self._client_cache[partner.name]

    def capability(self, client: PartnerClient) -> Capability:
        """The partner's CapabilityStatement, read again after ``capability_ttl`` seconds."""
        name = client.partner.name
        cached = self._capabilities.get(name)
        if cached is not None and time.monotonic() - cached[0] < self.capability_ttl:
            return cached[1]
        answer = check(client.request("GET", "metadata"), f"{name} CapabilityStatement")
        capability = capability_of(answer.body)
        self._capabilities[name] = (time.monotonic(), capability)
        if capability.instance is not None and self._learned is not None:
            self._learned(client.partner, capability.instance)
        return capability

    def current(self, type_: str, id_: str) -> StoredResource | None:
        """The resource's current version here (a deletion, too)."""
        return self.fhir.read_only(lambda tx: tx.resources.read(type_, id_))

    def send_resource(
        self,
        client: PartnerClient,
        capability: Capability,
        type_: str,
        content: dict[str, Any],
        version: int,
    ) -> str:
        """Write the resource at the partner idempotently; return the partner's id."""
        param, token = self.key(type_, content)
        found = self.write_resource(client, capability, type_, content, version, param, token)
        self.remember(client, type_, param, token, found)
        return found

    def write_resource(
        self,
        client: PartnerClient,
        capability: Capability,
        type_: str,
        content: dict[str, Any],
        version: int,
        param: str,
        token: str,
    ) -> str:
        body = self.outbound(client, type_, content)
        criteria = urlencode({param: token})
        what = f"{type_} {param}={token} to {client.partner.name}"
        # the partner's Patient is the partner's record (its MRN, address, GP...): it is found
        # or created, never replaced by ours (an update replaces the whole resource)
        never_update = type_ == "Patient"
        if (version == 1 or never_update) and capability.flag(type_, "conditionalCreate"):
            answer = check(
                client.request("POST", type_, body, {"If-None-Exist": criteria}), f"create {what}"
            )
            return self.stored_id(client, answer, type_, param, token)
        if not never_update and capability.flag(type_, "conditionalUpdate"):
            answer = check(
                client.request("PUT", f"{type_}?{criteria}", body), f"conditional update {what}"
            )
            return self.stored_id(client, answer, type_, param, token)
        existing = self.find(client, type_, param, token)
        if existing is None:
            return _id_of(check(client.request("POST", type_, body), f"create {what}"), type_)
        if never_update:
            return existing
        if not capability.updates(type_):
            if version == 1:
                return existing  # a redelivery of the first version: it is there already
            raise Refused(
                f"{client.partner.name} accepts creates of {type_} but no updates; "
                f"the change to {type_} {param}={token} cannot be delivered"
            )
        body["id"] = existing
        check(client.request("PUT", f"{type_}/{existing}", body), f"update {what}")
        return existing

    def stored_id(
        self, client: PartnerClient, answer: Answer, type_: str, param: str, token: str
    ) -> str:
        """The partner's id of what a conditional write stored.

        A 2xx is success (RFC 9110 §15.3) even with no body and no Location (a partner that
        answers ``return=minimal``): the id is then found by ``param=token``. A 200 whose body
        is a resource without that key is not ours: the partner matched another resource (it
        does not search by ``param``), and what we sent was not stored.
        """
        body = answer.body if isinstance(answer.body, dict) else None
        if body is not None and body.get("resourceType") == type_ and body.get("id"):
            if answer.status == 200 and not has_key(body, param, token):
                raise Refused(
                    f"{client.partner.name} answered the conditional write of {type_} "
                    f"{param}={token} with {type_}/{body['id']}, which does not carry it: the "
                    f"partner does not search by {param}, and what was sent is not stored there"
                )
            return str(body["id"])
        try:
            return _id_of(answer, type_)
        except Retry:
            if answer.body is not None or answer.text.strip():
                raise
            found = self.find(client, type_, param, token)
            if found is None:
                raise
            return found

    def send_delete(self, client: PartnerClient, row: OutboxRow) -> None:
        """Delete the resource the row deleted here, if the partner holds it."""
        last = self.previous(row)
        if last is None or last.content is None:
            return
        param, token = self.key(row.res_type, json.loads(last.content))
        existing = self.find(client, row.res_type, param, token)
        self.remember(client, row.res_type, param, token, None)
        if existing is not None:
            check(
                client.request("DELETE", f"{row.res_type}/{existing}"),
                f"delete {row.res_type} {param}={token} at {client.partner.name}",
            )

    def find(self, client: PartnerClient, type_: str, param: str, token: str) -> str | None:
        """The partner's id of the resource with ``param=token``, if it holds one.

        ``Prefer: handling=strict`` asks the partner to refuse a parameter it does not know
        (https://hl7.org/fhir/R4/search.html#errors) rather than answer with everything, and
        each match is checked here as well.
        """
        key = (client.partner.name, type_, param, token)
        known = self._found.get(key)
        if known is not None and time.monotonic() - known[0] < self.lookup_ttl:
            return known[1]
        answer = check(
            client.request(
                "GET", type_, headers={"Prefer": "handling=strict"}, params={param: token}
            ),
            f"search {type_} {param}={token} at {client.partner.name}",
        )
        body = answer.body if isinstance(answer.body, dict) else {}
        ids = [
            str(e["resource"]["id"])
            for e in body.get("entry") or []
            if isinstance(e, dict)
            and isinstance(e.get("resource"), dict)
            and e["resource"].get("resourceType") == type_
            and e["resource"].get("id")
            and (e.get("search") or {}).get("mode", "match") == "match"
            and has_key(e["resource"], param, token)
        ]
        if len(ids) > 1:
            raise Refused(
                f"{client.partner.name} holds {len(ids)} {type_} with {param}={token}; "
                "one is needed"
            )
        if ids:
            self.remember(client, type_, param, token, ids[0])
        return ids[0] if ids else None

    def remember(
        self, client: PartnerClient, type_: str, param: str, token: str, found: str | None
    ) -> None:
        key = (client.partner.name, type_, param, token)
        if found is None:
            self._found.pop(key, None)
        else:
            self._found[key] = (time.monotonic(), found)

    def source(self, type_: str, content: dict[str, Any]) -> str:
        """Where the resource comes from: the source it arrived with (relayed), else a URI
        naming this instance and the resource (``urn:uuid:<instance>#Goal/12``), which no
        URL alias changes."""
        source = (content.get("meta") or {}).get("source")
        if (
            isinstance(source, str)
            and source
            and not is_local(content, self.instance_id, tuple(self.partners.values()))
        ):
            return source
        return f"{instance_uri(self.instance_id)}#{type_}/{content['id']}"

    def key(self, type_: str, content: dict[str, Any]) -> tuple[str, str]:
        """The search that finds the resource at a partner: its identifier, or (for types
        without one, such as Provenance) its ``_source``."""
        if type_ in NO_IDENTIFIER_TYPES:
            return "_source", self.source(type_, content)
        return "identifier", identifier_token(*_identifier(self.identified(type_, content)))

    def identified(self, type_: str, content: dict[str, Any]) -> dict[str, Any]:
        """The resource with an identifier: its own, else one naming it at this service."""
        if type_ in NO_IDENTIFIER_TYPES or _has_identifier(content):
            return content
        url = f"{self.base_url}/{type_}/{content['id']}"
        return {**content, "identifier": [{"system": URI_SYSTEM, "value": url}]}

    def outbound(
        self, client: PartnerClient, type_: str, content: dict[str, Any]
    ) -> dict[str, Any]:
        """The resource as the partner should hold it: identified, sourced, references
        pointing at the partner's own resources."""
        body = self.identified(type_, content)
        # the profiles and the security labels: a restricted record stays restricted there
        kept = ("profile", "security")
        meta = {k: v for k, v in (body.get("meta") or {}).items() if k in kept}
        # meta.source names where the resource comes from, and the tag the instance that
        # originated it: no partner ever sends it back there
        meta["source"] = self.source(type_, content)
        meta["tag"] = [
            {"system": ORIGIN_TAG_SYSTEM, "code": origin_of(content) or self.instance_id}
        ]
        body = {k: v for k, v in body.items() if k not in ("id", "meta")}
        body["meta"] = meta
        cache: dict[str, dict[str, Any]] = {}

        def replace(element: dict[str, Any]) -> dict[str, Any] | None:
            ref = element["reference"]
            local = self.local(ref)
            if local is None:
                return None
            if ref not in cache:
                cache[ref] = self.partner_reference(client, *local)
            replaced = {k: v for k, v in element.items() if k != "reference"}
            rewritten = {**replaced, **cache[ref]}
            if not {"reference", "identifier", "display"} & set(rewritten):
                rewritten["display"] = ref  # a reference keeps at least what it said
            return rewritten

        rewritten: dict[str, Any] = replace_references(body, replace)
        return rewritten

    def local(self, ref: str) -> tuple[str, str] | None:
        """The type and id of a reference to a resource of this service, if it is one."""
        if ref.startswith(self.base_url + "/"):
            ref = ref[len(self.base_url) + 1 :]
        parts = ref.split("/")
        if len(parts) == 2 and parts[0][:1].isupper() and "?" not in ref and ":" not in ref:
            return parts[0], parts[1]
        return None

    def partner_reference(self, client: PartnerClient, type_: str, id_: str) -> dict[str, Any]:
        """What a reference to ``type_/id_`` here becomes at the partner (the partner's own
        resource, the resource's identifier, or nothing but its display)."""
        partner = client.partner
        stored = self.current(type_, id_) if type_ in SUPPORTED_TYPES else None
        if stored is None or stored.deleted or stored.content is None:
            # nothing here the partner could follow (a Practitioner, say): the reference
            # keeps its display, never a URL that dangles
            return {}
        content = json.loads(stored.content)
        if type_ == "Patient":
            identifier = partner.knows_patient(content)
            if identifier is None:
                raise Refused(f"Patient/{id_} has no identifier in a system {partner.name} uses")
            found = self.find(client, "Patient", "identifier", identifier_token(*identifier))
            if found is None:
                if "Patient" not in partner.send_types:
                    raise Waiting(
                        f"{partner.name} has no Patient with identifier "
                        f"{identifier[0]}|{identifier[1]} yet",
                        ("Patient", id_),
                    )
                capability = self.capability(client)
                found = self.send_resource(client, capability, "Patient", content, 1)
            return {"reference": f"Patient/{found}"}
        if type_ not in partner.send_types or not self.capability(client).holds(type_):
            # the partner does not hold this type (or is not sent it): no search for it there;
            # the reference names it by its identifier (Reference.identifier), which stays true
            if type_ in NO_IDENTIFIER_TYPES:
                return {"reference": f"{self.base_url}/{type_}/{id_}"}
            system, value = _identifier(self.identified(type_, content))
            return {"type": type_, "identifier": {"system": system, "value": value}}
        found = self.find(client, type_, *self.key(type_, content))
        if found is None:
            raise Waiting(f"{type_}/{id_} is not at {partner.name} yet", (type_, id_))
        return {"reference": f"{type_}/{found}"}


def identifier_token(system: str, value: str) -> str:
    """The ``identifier`` search value for one identifier (search.html#escaping)."""
    return f"{escape_value(system)}|{escape_value(value)}"


def _has_identifier(content: dict[str, Any]) -> bool:
    return any(
        isinstance(i, dict) and i.get("system") and i.get("value")
        for i in content.get("identifier") or []
    )


def has_key(resource: dict[str, Any], param: str, token: str) -> bool:
    """Whether a resource the partner returned really has the searched identifier or source."""
    if param == "_source":
        return bool((resource.get("meta") or {}).get("source") == token)
    return any(
        isinstance(i, dict)
        and i.get("system")
        and i.get("value")
        and identifier_token(str(i["system"]), str(i["value"])) == token
        for i in _identifiers(resource)
    )


def _identifiers(resource: dict[str, Any]) -> list[Any]:
    """A resource's identifiers (one object for a Bundle, a list for the others)."""
    given = resource.get("identifier")
    return [given] if isinstance(given, dict) else list(given or [])


def _identifier(content: dict[str, Any]) -> tuple[str, str]:
    for item in content.get("identifier") or []:
        if isinstance(item, dict) and item.get("system") and item.get("value"):
            return str(item["system"]), str(item["value"])
    raise Refused("the resource has no identifier to write it idempotently")


def _id_of(answer: Answer, type_: str) -> str:
    body = answer.body if isinstance(answer.body, dict) else {}
    if body.get("resourceType") == type_ and body.get("id"):
        return str(body["id"])
    location = answer.headers.get("location") or answer.headers.get("content-location") or ""
    parts = location.split("/")
    if type_ in parts and parts.index(type_) + 1 < len(parts):
        return parts[parts.index(type_) + 1]
    if answer.body is None and answer.text.strip():
        kind = answer.headers.get("content-type") or "no Content-Type"
        raise Retry(
            f"the partner answered {answer.status} with a body that is not FHIR JSON ({kind}) "
            f"and no Location, so which {type_} it stored is not known"
        )
    if isinstance(answer.body, dict) and answer.body:
        found = answer.body.get("resourceType") or "no resourceType"
        raise Retry(
            f"the partner answered {answer.status} with a {found} body and no Location, not "
            f"the {type_} it stored"
        )
    raise Retry(f"the partner did not say which {type_} it stored (no body, no Location)")
