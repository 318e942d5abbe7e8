"""Config.from_env: WHATMATTERS_* variables, safe defaults, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import Config, ConfigError


def test_defaults_are_local_and_need_no_variables() -> None:
    config = Config.from_env({})
    assert config.host == "127.0.0.1"
    assert config.partners_file is None
    assert config.outbox_worker is True
    assert config.own_base_url == "http://127.0.0.1:8080/fhir"


def test_exchange_settings_are_read() -> None:
    config = Config.from_env(
        {
            "WHATMATTERS_PARTNERS_FILE": "/etc/whatmatters/partners.yaml",
            "WHATMATTERS_OUTBOX_WORKER": "false",
            "WHATMATTERS_OUTBOX_POLL_SECONDS": "0.25",
            "WHATMATTERS_OUTBOX_RETRY_CAP_SECONDS": "600",
            "WHATMATTERS_PORT": "9000",
            "WHATMATTERS_PUBLIC_BASE_URL": "https://wm.example.org/fhir",
        }
    )
    assert config.partners_file == Path("/etc/whatmatters/partners.yaml")
    assert config.outbox_worker is False
    assert config.outbox_poll_seconds == 0.25
    assert config.outbox_retry_cap_seconds == 600.0
    assert config.port == 9000
    assert config.own_base_url == "https://wm.example.org/fhir"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("WHATMATTERS_PORT", "eighty", "WHATMATTERS_PORT must be a whole number"),
        ("WHATMATTERS_OUTBOX_LEASE_SECONDS", "soon", "must be a number"),
        (
            "WHATMATTERS_OUTBOX_POLL_SECONDS",
            "0",
            "WHATMATTERS_OUTBOX_POLL_SECONDS must be positive",
        ),
        ("WHATMATTERS_OUTBOX_WORKER", "maybe", "must be true or false"),
    ],
)
def test_unusable_values_are_refused_by_name(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.from_env({name: value})


def test_read_isolation_and_edge_settings_are_read() -> None:
    defaults = Config.from_env({})
    assert defaults.max_chain_depth == 3
    assert defaults.allowed_hosts == ("localhost", "127.0.0.1", "[::1]")
    assert defaults.auth_max_token_seconds == 3600
    assert defaults.metrics_public is False
    config = Config.from_env(
        {
            "WHATMATTERS_MAX_CHAIN_DEPTH": "2",
            "WHATMATTERS_ALLOWED_HOSTS": "FHIR.example.org, localhost",
            "WHATMATTERS_AUTH_MAX_TOKEN_SECONDS": "900",
            "WHATMATTERS_METRICS_PUBLIC": "true",
        }
    )
    assert config.max_chain_depth == 2
    assert config.allowed_hosts == ("fhir.example.org", "localhost")
    assert config.auth_max_token_seconds == 900
    assert config.metrics_public is True
    with pytest.raises(ConfigError, match="WHATMATTERS_MAX_CHAIN_DEPTH"):
        Config.from_env({"WHATMATTERS_MAX_CHAIN_DEPTH": "0"})


def test_bulk_export_settings_are_read() -> None:
    assert Config.from_env({}).export_dir == Path("instance") / "exports"
    assert Config.from_env({}).export_ttl_seconds == 3600.0
    config = Config.from_env(
        {"WHATMATTERS_EXPORT_DIR": "/srv/exports", "WHATMATTERS_EXPORT_TTL_SECONDS": "600"}
    )
    assert config.export_dir == Path("/srv/exports")
    assert config.export_ttl_seconds == 600.0
    with pytest.raises(ConfigError, match="WHATMATTERS_EXPORT_TTL_SECONDS must be positive"):
        Config.from_env({"WHATMATTERS_EXPORT_TTL_SECONDS": "0"})


PUBLIC = Config(public_base_url="https://wm.example/fhir")


@pytest.mark.parametrize(
    ("config", "url", "own"),
    [
        (Config(), "http://127.0.0.1:8080/fhir/Patient/1", True),
        (Config(), "https://localhost/fhir/Patient/1", True),
        (Config(), "http://[::1]:9000/fhir/Patient/1", True),
        (Config(), "http://LOCALHOST./fhir/Patient/1", True),
        (Config(), "http://other-ehr.example/fhir/Patient/1", False),
        (Config(), "http://127.0.0.1:8080/R4/Patient/1", False),  # not under the base path
        (Config(), "ftp://127.0.0.1/fhir/Patient/1", False),
        (Config(), "http://127.0.0.1:99999999/fhir/Patient/1", False),  # a malformed port
        # any Host answered: this server has no name of its own to recognise
        (Config(allowed_hosts=("*",)), "http://any.example/fhir/Patient/1", False),
        (Config(), "http://127.0.0.1/fhir/x/y/Patient/1", False),  # not Type/id
        (Config(), "http://evil@127.0.0.1/fhir/Patient/1", False),  # userinfo
        (Config(), "http://127.0.0.1:8080/fhir/Patient/1/_history/2", True),
        (PUBLIC, "http://localhost:8080/fhir/Goal/g", True),  # the inner name, behind a proxy
        (PUBLIC, "http://wm.example:80/fhir/Goal/g", True),
        (Config(public_base_url="https://wm.example/fhir"), "https://WM.example/fhir/Goal/g", True),
        # an allowed host name too (the inner name behind a proxy); nothing else
        (Config(public_base_url="https://wm.example/fhir"), "http://127.0.0.1/fhir/Goal/g", True),
        (Config(public_base_url="https://wm.example/fhir"), "http://o.example/fhir/Goal/g", False),
        (
            Config(public_base_url="https://wm.example/fhir"),
            "https://wm.example/fhirx/Goal/g",
            False,
        ),
    ],
)
def test_own_urls_are_the_base_the_service_answers_on(config: Config, url: str, own: bool) -> None:
    assert config.is_own_url(url) is own
