"""What Matters: a FHIR R4 service for a patient's priorities and the goals that come from them.

This module is the composition root: ``create_app`` and the ``build_*`` functions are the only
place that names concrete classes and wires them together, so it may import every package of
the service (lazily, inside the functions). The layers and their dependency rule are in the
README, "How it fits together".
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from flask import Flask

from service.config import Config

if TYPE_CHECKING:
    from service.exchange.partners import Partner
    from service.exchange.worker import Worker
    from service.fhir.ingest import Mappings
    from service.fhir.interactions import FhirService
    from service.storage import Store
    from service.validation.packages import DocumentChecker
    from service.validation.profiles import ProfileRegistry


def build_fhir_service(config: Config, registry: ProfileRegistry | None = None) -> FhirService:
    """Open the configured database and wire the FHIR core to it."""
    from service.storage.sql import SqlStore

    store = SqlStore.from_url(config.database_url, config.db_pool_size)
    if config.auto_migrate:
        store.migrate()
    fhir = wire_fhir_service(config, store, registry)
    # Learn the instance identifier now, in a transaction of its own: the first write would
    # otherwise ask for it while holding its own write transaction (on SQLite, a wait on itself).
    # A database not yet migrated (any driver error) or down is asked again later.
    with contextlib.suppress(Exception):
        _ = fhir.instance_id
    return fhir


def wire_fhir_service(
    config: Config, store: Store, registry: ProfileRegistry | None = None
) -> FhirService:
    """The FHIR core over ``store``: profiles loaded and checked, validators, search params."""
    from service.fhir.conformance_resources import ConformanceResources
    from service.fhir.interactions import FhirService
    from service.fhir.search_index import SearchParameters
    from service.validation.definitions import Definitions
    from service.validation.profiles import ProfileRegistry, search_parameters
    from service.validation.validator import ResourceValidator

    definitions = Definitions.shared()
    registry = registry or ProfileRegistry.load(definitions, config.profiles_dir)
    search_params = SearchParameters.shared(
        definitions.search_parameters + search_parameters([f.resource for f in registry.files])
    ).with_own_base(config.is_own_url)
    from service.exchange.feed import OutboxFeed
    from service.exchange.partners import load_partners

    required = dict(config.required_profiles)
    fhir = FhirService(
        store,
        ResourceValidator(
            registry, required_profiles=required, unknown_extensions=config.unknown_extensions
        ),
        search_params,
        definitions,
        thorough=ResourceValidator(
            registry,
            invariants=True,
            required_profiles=required,
            unknown_extensions=config.unknown_extensions,
        ),
        default_page_size=config.default_page_size,
        max_page_size=config.max_page_size,
        max_chain_depth=config.max_chain_depth,
        terminology=registry.definitions.terminology,
        return_warnings=config.validation_warnings,
        conformance=ConformanceResources([f.resource for f in registry.files], registry.snapshots),
        unique_identifier_systems=config.unique_identifier_systems,
    )
    # every write path queues its deliveries to partners and subscribers in its transaction
    fhir.listeners.append(
        OutboxFeed(
            load_partners(config.partners_file),
            fhir.clock,
            lambda: fhir.instance_id,
            config.subscription_endpoint_allow,
        )
    )
    return fhir


def build_worker(
    config: Config,
    fhir: FhirService,
    partners: tuple[Partner, ...],
    ips_checker: DocumentChecker | None = None,
) -> Worker:
    """The outbox worker over ``fhir``: HTTP clients per partner, the summary for documents
    (and the IPS document for partners that ask for it, checked by ``ips_checker`` or by the
    IPS package of ``config``)."""
    from service.exchange.bulk_export import ExportFolder
    from service.exchange.partner_client import HttpPartnerClient
    from service.exchange.queue import Backoff
    from service.exchange.summary import SummaryItem
    from service.exchange.worker import Worker
    from service.fhir.actor import Actor
    from service.priorities.operations import WhatMatters
    from service.priorities.view import priorities

    what_matters = WhatMatters(fhir)
    base = config.own_base_url

    def summarise(patient_id: str) -> tuple[str | None, list[SummaryItem]]:
        bundle = what_matters.what_matters(Actor.system(), patient_id, False, base).body
        with fhir.session(Actor.system()) as session:
            patient = session.read("Patient", patient_id).stored
        name = None
        if patient is not None and patient.content:
            import json

            from service.api.page import patient_name

            name = patient_name(json.loads(patient.content))
        items = []
        for item in priorities(bundle or {})["priorities"]:
            rank = item["rank"] if item.get("ranked", True) else None
            setting = ", ".join(item.get("settings") or []) or item.get("settingType")
            items.append(
                SummaryItem(
                    rank=rank,
                    text=item["text"],
                    kind=item["kind"],
                    recorded_by=item.get("recordedBy"),
                    setting=setting,
                    date=item.get("date"),
                    status=item.get("status") if item["kind"] == "goal" else None,
                )
            )
            # the goals that address a statement follow it, with their status
            items += [
                SummaryItem(rank, g["text"], "goal", None, None, None, g.get("status"), True)
                for g in item.get("goals") or []
            ]
        return name, items

    ips_document = None
    if any(partner.send_document == "ips" for partner in partners):
        from service.priorities.ips import Summaries
        from service.validation.packages import load_ips

        # partners that take IPS get the $summary document, checked as $summary checks it
        summaries = Summaries(what_matters, ips_checker or (lambda: load_ips(config.ips_package)))

        def ips_document(patient_id: str) -> dict[str, Any]:
            return summaries.document(Actor.system(), patient_id, base)

    def records(patient_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """The patient and its statements, goals and Lists, for the document's data block."""
        import json

        from service.exchange.summary_data import DATA_TYPES

        with fhir.session(Actor.system()) as session:
            patient = session.read("Patient", patient_id).stored
        if patient is None or patient.deleted or not patient.content:
            return None
        bundle = what_matters.what_matters(Actor.system(), patient_id, False, base).body or {}
        held = [
            entry["resource"]
            for entry in bundle.get("entry", [])[1:]  # the first is the merged List: not stored
            if entry["resource"].get("resourceType") in DATA_TYPES
            and "/_history/" not in entry.get("fullUrl", "")
        ]
        return json.loads(patient.content), held

    from service.exchange.feed import OutboxFeed

    feeds = [listener for listener in fhir.listeners if isinstance(listener, OutboxFeed)]
    return Worker(
        fhir,
        partners,
        base,
        HttpPartnerClient,
        summarise=summarise,
        ips=ips_document,
        records=records,
        learned=feeds[0].learn if feeds else None,
        endpoint_allow=config.subscription_endpoint_allow,
        lease_seconds=config.outbox_lease_seconds,
        backoff=Backoff(
            base_seconds=config.outbox_retry_base_seconds,
            cap_seconds=config.outbox_retry_cap_seconds,
            give_up_seconds=config.outbox_give_up_hours * 3600,
        ),
        exports=ExportFolder(config.export_dir, config.export_ttl_seconds),
    )


def load_mappings(config: Config, resources: list[dict[str, Any]] | None = None) -> Mappings:
    """The mapping files, and the Questionnaires and ConceptMaps of the profiles folder they
    read (``resources``, when the caller has loaded the folder already)."""
    from service.fhir.ingest import Mappings
    from service.mapping.files import MappingError, load_folder
    from service.validation.profiles import load_profile_resources

    if resources is None:
        resources = load_profile_resources(config.profiles_dir)

    def by_url(kind: str) -> dict[str, dict[str, Any]]:
        return {str(r["url"]): r for r in resources if r.get("resourceType") == kind and "url" in r}

    mappings = Mappings(
        load_folder(config.mappings_dir), by_url("Questionnaire"), by_url("ConceptMap")
    )
    for mapping in mappings.files.values():
        for name, codemap in mapping.content.get("codemaps", {}).items():
            if "conceptmap" in codemap and codemap["conceptmap"] not in mappings.conceptmaps:
                raise MappingError(
                    f"{mapping.where(f'codemaps.{name}.conceptmap')}: no ConceptMap "
                    f"{codemap['conceptmap']} in {config.profiles_dir}"
                )
    return mappings


def create_app(
    config: Config | None = None,
    *,
    registry: ProfileRegistry | None = None,
    mappings: Mappings | None = None,
    ips_checker: DocumentChecker | None = None,
) -> Flask:
    """Build the application; with build_fhir_service, the only place that wires classes.

    ``registry`` and ``mappings`` are the loaded profiles and mapping folders of ``config``;
    when absent they are read here. Reading them is most of the start-up time, so the tests
    load them once per run and pass them to every app they build."""
    from service import api

    config = config or Config.from_env()
    app = Flask(__name__, instance_relative_config=False)
    app.config["WHATMATTERS"] = config
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    from service.priorities.operations import WhatMatters
    from service.validation.definitions import Definitions
    from service.validation.profiles import ProfileRegistry

    # the profiles folder is read once, for the validators and for the mappings
    if registry is None:
        registry = ProfileRegistry.load(Definitions.shared(), config.profiles_dir)
    fhir = build_fhir_service(config, registry)
    app.extensions["whatmatters.store"] = fhir.store
    app.extensions["whatmatters.fhir"] = fhir
    operations = WhatMatters(fhir)
    app.extensions["whatmatters.priorities"] = operations
    from service.fhir.audit_trail import AuditTrail
    from service.priorities.ips import Summaries
    from service.validation.packages import load_ips

    app.extensions["whatmatters.audit"] = AuditTrail(fhir, config.audit_window_ms / 1000)
    # the IPS 2.0.0 profiles, read on the first summary when the package is there (else a
    # warning, and summaries go unchecked)
    ips_path = config.ips_package
    checker: Any = ips_checker
    if checker is None:
        present = ips_path is not None and ips_path.is_file()
        # absent: the warning now, at start-up, where an operator looks for it
        checker = (lambda: load_ips(ips_path)) if present else load_ips(ips_path)
    app.extensions["whatmatters.summaries"] = Summaries(operations, checker)
    if mappings is None:
        mappings = load_mappings(config, [f.resource for f in registry.files])
    app.extensions["whatmatters.mappings"] = mappings
    # $ingest reloads the mappings folder when it changes (service.api.live_mappings)
    app.extensions["whatmatters.load_mappings"] = lambda: load_mappings(config)
    from service.exchange.partners import load_partners
    from service.exchange.smart import SigningKey, jwks

    partners = load_partners(config.partners_file)
    app.extensions["whatmatters.partners"] = partners
    app.extensions["whatmatters.jwks"] = jwks(
        [
            SigningKey.from_pem_file(p.auth.private_key_file, p.auth.algorithm)
            for p in partners
            if p.auth.private_key_file is not None and p.auth.algorithm is not None
        ]
    )
    from service.api.negotiation import install_bodiless_answers

    install_bodiless_answers(app)  # first: its hook runs last, on the final answer
    api.register(app, config.base_path)
    from service.api import observability

    observability.install(app, config.metrics_dir)
    from service.api.auth import install, verifier_for
    from service.api.hardening import (
        install_cors,
        install_edge_checks,
        install_rate_limits,
        install_trusted_proxies,
    )

    # in this order: the client's address from trusted proxies; peers and hosts; CORS
    # preflights need no token; floods are cut before tokens are checked
    install_trusted_proxies(app, config)
    install_edge_checks(app, config)
    install_cors(app, config)
    install_rate_limits(app, config)
    install(app, config, config.base_path, verifier_for(config))
    return app
