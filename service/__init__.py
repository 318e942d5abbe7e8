"""What Matters: a FHIR R4 service for a patient's priorities and the goals that come from them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask

from service.config import Config

if TYPE_CHECKING:
    from service.fhir.interactions import FhirService


def build_fhir_service(config: Config) -> FhirService:
    """Wire the FHIR core to its store, validator and search parameters."""
    from service.fhir.interactions import FhirService
    from service.fhir.searchparams import SearchParameters
    from service.storage.sql import SqlStore
    from service.validation.definitions import Definitions
    from service.validation.profiles import load_profile_resources, search_parameters
    from service.validation.structure import StructureValidator

    store = SqlStore.from_url(config.database_url, config.db_pool_size)
    if config.auto_migrate:
        store.migrate()
    definitions = Definitions.shared()
    profile_resources = load_profile_resources(config.profiles_dir)
    search_params = SearchParameters.shared(
        definitions.search_parameters + search_parameters(profile_resources)
    )
    return FhirService(
        store,
        StructureValidator(definitions),
        search_params,
        definitions,
        thorough=StructureValidator(definitions, invariants=True),
        default_page_size=config.default_page_size,
        max_page_size=config.max_page_size,
    )


def create_app(config: Config | None = None) -> Flask:
    """Build the application; with build_fhir_service, the only place that wires classes."""
    from service import api

    config = config or Config.from_env()
    app = Flask(__name__, instance_relative_config=False)
    app.config["WHATMATTERS"] = config
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    fhir = build_fhir_service(config)
    app.extensions["whatmatters.store"] = fhir.store
    app.extensions["whatmatters.fhir"] = fhir
    api.register(app, config.base_path)
    return app
