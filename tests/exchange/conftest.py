"""Fixtures of the exchange tests: a hospital service with one partner (the GP), in memory,
and the clean-up of the real instances the end-to-end tests start."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service import wire_fhir_service
from service.config import Config
from service.storage.memory import MemoryStore
from tests.direct import Direct
from tests.exchange.instances import Instance

MRN = "urn:oid:2.16.840.1.113883.19.5"


@pytest.fixture(autouse=True, scope="session")
def _drop_instance_databases() -> Iterator[None]:
    yield
    for instance in Instance.made:
        instance.stop()
        instance.drop_database()


@pytest.fixture
def partner_file(tmp_path: Path) -> Path:
    path = tmp_path / "partners.yaml"
    path.write_text(
        f"""partners:
  - name: gp
    base_url: http://gp.example/fhir
    send:
      types: [Patient, Goal]
      patient_identifier_systems: ["{MRN}"]
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def fhir(partner_file: Path, folders: dict[str, Any]) -> Direct:
    service = wire_fhir_service(
        Config(partners_file=partner_file, public_base_url="http://hospital.example/fhir"),
        MemoryStore(),
        folders["registry"],
    )
    return Direct(service)
