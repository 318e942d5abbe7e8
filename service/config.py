"""Service configuration: one frozen object, read from WHATMATTERS_* variables by the CLI."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

_PROJECT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "sqlite:///instance/whatmatters.db"
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
AUTH_MODES = ("none", "smart")
NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"


class ConfigError(ValueError):
    """A configuration value cannot be used."""


@dataclass(frozen=True)
class Config:
    """Settings of one running service; safe local defaults, tests pass their own."""

    database_url: str = DEFAULT_DATABASE_URL
    host: str = "127.0.0.1"
    port: int = 8080
    base_path: str = "/fhir"
    # The absolute base URL used in Location headers and Bundle fullUrls when set;
    # otherwise the URL the request came in on is used.
    public_base_url: str | None = None
    max_body_bytes: int = 10 * 1024 * 1024
    auto_migrate: bool = True
    # The repository's folder by default; deployments point it at their own copy.
    profiles_dir: Path = field(default_factory=lambda: _PROJECT / "profiles")
    mappings_dir: Path = field(default_factory=lambda: _PROJECT / "mappings")
    default_page_size: int = 50
    max_page_size: int = 1000
    db_pool_size: int = 5
    # The What Matters measure counts patients of at least this age at the period's start.
    measure_min_age: int = 65
    # Profiles every write of a type must meet (any one of them), e.g.
    # (("Goal", ("http://whatmatters.example/fhir/StructureDefinition/wmty-personal-goal",)),).
    # Empty by default: EHRs send ordinary Goals and Observations too (the validation policy in
    # the README, "How it fits together").
    required_profiles: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # Whether validation warnings accompany successful writes (Prefer: return=OperationOutcome,
    # Bundle entry outcomes) and 422 errors.
    validation_warnings: bool = True
    # An extension whose definition this server does not hold: "warning" (accepted, as R4's
    # extensibility rules intend: anyone may define extensions, and refusing them would refuse
    # other vendors' data) or "error" (refused, as the HL7 reference validator reports it).
    unknown_extensions: str = "warning"
    # Exchange: the partners file (none by default), and the outbox worker. ``serve`` runs the
    # worker in each gunicorn process unless outbox_worker is off (then run `whatmatters worker`).
    partners_file: Path | None = None
    # The IPS 2.0.0 npm package (hl7.fhir.uv.ips-2.0.0.tgz, its dependencies beside it) that
    # $summary documents are checked against; absent: they are served unchecked (a warning).
    ips_package: Path | None = None
    outbox_worker: bool = True
    outbox_poll_seconds: float = 0.5
    outbox_lease_seconds: float = 60.0
    outbox_retry_base_seconds: float = 1.0
    outbox_retry_cap_seconds: float = 300.0
    outbox_give_up_hours: float = 72.0
    # Bulk Data export: where the NDJSON files are written (a folder shared by every process
    # that serves or writes them), and how long they are kept after the export ended.
    export_dir: Path = field(default_factory=lambda: Path("instance") / "exports")
    export_ttl_seconds: float = 3600.0
    # Authorization: "none" (the embedded default, refused unless bound to a loopback address)
    # or "smart": Bearer JWTs from auth_issuer, verified with the keys at auth_jwks_url (its
    # /.well-known/jwks.json when unset), for auth_audience (our own base URL when unset).
    auth_mode: str = "none"
    auth_issuer: str | None = None
    auth_audience: str | None = None
    auth_jwks_url: str | None = None
    auth_authorize_url: str | None = None
    auth_token_url: str | None = None
    auth_leeway_seconds: int = 30
    # Requests a minute per client (and per network address), bursts of rate_limit_burst;
    # unset: 1200 in the smart mode, off in the loopback-only none mode. 0 turns it off.
    rate_limit_per_minute: int | None = None
    rate_limit_burst: int = 100
    # Origins whose browser apps may call the API (CORS); "*" for any. None by default.
    cors_origins: tuple[str, ...] = ()
    # Identifier systems in which no two Patients may share a value (a national number names
    # one person); a write that would make two is refused.
    unique_identifier_systems: tuple[str, ...] = (NHS_NUMBER_SYSTEM,)
    # Hosts (names, addresses or CIDR ranges) a Subscription's rest-hook endpoint may name
    # besides public https ones; loopback, link-local and private addresses only when listed.
    subscription_endpoint_allow: tuple[str, ...] = ()
    # Chain links plus _has levels one search parameter may take (deeper: 400).
    max_chain_depth: int = 3
    # Without public_base_url, the Host names requests may carry (any port); others get 400.
    allowed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "[::1]")
    # The longest lifetime (exp after iat, or after now without iat) an access token may have.
    auth_max_token_seconds: int = 3600
    # Whether /metrics answers without a token in the smart mode.
    metrics_public: bool = False
    # Redis shared by every worker and replica for the rate limits; unset: each process counts.
    redis_url: str | None = None
    # How many proxies in front of the service may set X-Forwarded-For/-Proto/-Host (0: none).
    trusted_proxy_hops: int = 0
    # How long (ms) an answered request's AuditEvent may wait in its process's buffer before it
    # is stored, in batches (smart mode); 0 stores each before its answer is sent. The window
    # is what a crash may lose (README, Authorization: the audit trail).
    audit_window_ms: int = 200
    # prometheus_client's multiprocess folder (PROMETHEUS_MULTIPROC_DIR); `serve` sets its own.
    metrics_dir: Path | None = None
    # where `serve` writes its master's pid (gunicorn's pidfile), for `map reload` to signal
    pid_file: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        """Build a Config from WHATMATTERS_* variables, falling back to the defaults."""
        env = os.environ if environ is None else environ
        config = cls()
        changes: dict[str, object] = {}
        for name, current in (
            ("database_url", config.database_url),
            ("host", config.host),
            ("base_path", config.base_path),
            ("public_base_url", config.public_base_url),
            ("auth_mode", config.auth_mode),
            ("auth_issuer", config.auth_issuer),
            ("auth_audience", config.auth_audience),
            ("auth_jwks_url", config.auth_jwks_url),
            ("auth_authorize_url", config.auth_authorize_url),
            ("auth_token_url", config.auth_token_url),
            ("redis_url", config.redis_url),
        ):
            value = env.get(f"WHATMATTERS_{name.upper()}")
            if value is not None and value != current:
                changes[name] = value
        for name in (
            "port",
            "max_body_bytes",
            "default_page_size",
            "max_page_size",
            "db_pool_size",
            "auth_leeway_seconds",
            "rate_limit_per_minute",
            "rate_limit_burst",
            "max_chain_depth",
            "auth_max_token_seconds",
            "trusted_proxy_hops",
            "measure_min_age",
            "audit_window_ms",
        ):
            _number(env, name, int, "a whole number", changes)
        for name in ("profiles_dir", "mappings_dir"):
            raw_dir = env.get(f"WHATMATTERS_{name.upper()}")
            if raw_dir is not None:
                changes[name] = Path(raw_dir)
        raw_metrics = env.get("PROMETHEUS_MULTIPROC_DIR") or env.get("prometheus_multiproc_dir")
        if raw_metrics:
            changes["metrics_dir"] = Path(raw_metrics)
        raw_export = env.get("WHATMATTERS_EXPORT_DIR")
        if raw_export:
            changes["export_dir"] = Path(raw_export)
        raw_ips = env.get("WHATMATTERS_IPS_PACKAGE")
        cache = Path(env.get("WHATMATTERS_CACHE") or Path.home() / ".cache" / "whatmatters")
        changes["ips_package"] = Path(raw_ips) if raw_ips else cache / "hl7.fhir.uv.ips-2.0.0.tgz"
        raw_pid_file = env.get("WHATMATTERS_PID_FILE")
        if raw_pid_file:
            changes["pid_file"] = Path(raw_pid_file)
        raw_file = env.get("WHATMATTERS_PARTNERS_FILE")
        if raw_file:
            changes["partners_file"] = Path(raw_file)
        for name in (
            "outbox_poll_seconds",
            "outbox_lease_seconds",
            "outbox_retry_base_seconds",
            "outbox_retry_cap_seconds",
            "outbox_give_up_hours",
            "export_ttl_seconds",
        ):
            number = _number(env, name, float, "a number", changes)
            if number is not None and number <= 0:
                raise ConfigError(f"WHATMATTERS_{name.upper()} must be positive")
        for name in ("auto_migrate", "validation_warnings", "outbox_worker", "metrics_public"):
            raw = env.get(f"WHATMATTERS_{name.upper()}")
            if raw is not None:
                changes[name] = _boolean(f"WHATMATTERS_{name.upper()}", raw)
        for name in ("cors_origins", "unique_identifier_systems", "subscription_endpoint_allow"):
            raw_list = env.get(f"WHATMATTERS_{name.upper()}")
            if raw_list is not None:
                changes[name] = tuple(o.strip() for o in raw_list.split(",") if o.strip())
        raw_hosts = env.get("WHATMATTERS_ALLOWED_HOSTS")
        if raw_hosts is not None:
            changes["allowed_hosts"] = tuple(
                h.strip().lower() for h in raw_hosts.split(",") if h.strip()
            )
        raw_unknown = env.get("WHATMATTERS_UNKNOWN_EXTENSIONS")
        if raw_unknown is not None:
            changes["unknown_extensions"] = raw_unknown.strip().lower()
        raw = env.get("WHATMATTERS_REQUIRED_PROFILES")
        if raw is not None:
            changes["required_profiles"] = parse_required_profiles(raw)
        return replace(config, **changes)  # type: ignore[arg-type]

    @property
    def own_base_url(self) -> str:
        """This service's FHIR base URL as partners and subscribers see it."""
        return self.public_base_url or f"http://{self.host}:{self.port}{self.base_path}"

    def is_own_url(self, url: str) -> bool:
        """Whether an absolute URL names a resource on this service's FHIR base
        (search.html §3.1.1.4.13): ``http(s)://host[:port]/<base path>/Type/id`` (a version
        may follow), where host is the public base URL's, or an allowed host name (on any
        port: behind a proxy the service is also called on its inner name). With no public
        base URL and any Host answered (``*``) this server has no name of its own, and no
        absolute URL is taken for one of its resources."""
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(url)
            name = parts.hostname or ""
            _ = parts.port  # checked: out of range or not a number is a ValueError
        except ValueError:  # a malformed port or address
            return False
        public = urlsplit(self.public_base_url) if self.public_base_url else None
        base_path = public.path.rstrip("/") if public is not None else self.base_path
        resource = parts.path[len(base_path) :] if parts.path.startswith(base_path) else ""
        if parts.scheme not in ("http", "https") or _OWN_PATH.fullmatch(resource) is None:
            return False
        if parts.username is not None or parts.password is not None:
            return False
        # urlsplit gives an IPv6 address without its brackets
        name = f"[{name}]" if ":" in name else name.rstrip(".")
        return name in _own_hosts(self.public_base_url, self.allowed_hosts)

    def __post_init__(self) -> None:
        if not self.base_path.startswith("/") or self.base_path.endswith("/"):
            raise ConfigError("base_path must start with '/' and not end with '/'")
        if self.max_body_bytes <= 0 or self.default_page_size <= 0 or self.max_page_size <= 0:
            raise ConfigError("sizes must be positive")
        if self.max_chain_depth < 1 or self.auth_max_token_seconds <= 0:
            raise ConfigError(
                "WHATMATTERS_MAX_CHAIN_DEPTH and WHATMATTERS_AUTH_MAX_TOKEN_SECONDS must be "
                "positive"
            )
        if self.auth_mode not in AUTH_MODES:
            raise ConfigError(
                f"WHATMATTERS_AUTH_MODE must be one of {', '.join(AUTH_MODES)}, "
                f"not {self.auth_mode!r}"
            )
        if self.trusted_proxy_hops < 0:
            raise ConfigError("WHATMATTERS_TRUSTED_PROXY_HOPS must be 0 or more")
        if not 0 <= self.audit_window_ms <= 10_000:
            raise ConfigError("WHATMATTERS_AUDIT_WINDOW_MS must be from 0 to 10000")
        if self.unknown_extensions not in ("warning", "error"):
            raise ConfigError(
                "WHATMATTERS_UNKNOWN_EXTENSIONS must be warning or error, "
                f"not {self.unknown_extensions!r}"
            )
        if self.auth_mode == "smart" and not self.auth_issuer:
            raise ConfigError("WHATMATTERS_AUTH_MODE=smart needs WHATMATTERS_AUTH_ISSUER")

    @property
    def requests_per_minute(self) -> int:
        """The rate limit in force (0: none)."""
        if self.rate_limit_per_minute is not None:
            return max(self.rate_limit_per_minute, 0)
        return 1200 if self.auth_mode == "smart" else 0

    @property
    def jwks_url(self) -> str | None:
        """Where the issuer's signing keys are published."""
        if self.auth_jwks_url:
            return self.auth_jwks_url
        if self.auth_issuer:
            return self.auth_issuer.rstrip("/") + "/.well-known/jwks.json"
        return None

    @property
    def audience(self) -> str:
        """The ``aud`` every access token must carry: this FHIR server's base URL."""
        return self.auth_audience or self.own_base_url


def parse_required_profiles(raw: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Parse ``Goal=URL,Observation=URL|URL``: the profiles each type must meet (any one)."""
    result: dict[str, tuple[str, ...]] = {}
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        type_, sep, urls = part.partition("=")
        profiles = tuple(u.strip() for u in urls.split("|") if u.strip())
        if not sep or not type_.strip().isidentifier() or not profiles:
            raise ConfigError(
                f"WHATMATTERS_REQUIRED_PROFILES: {part!r} is not TYPE=URL (several URLs: URL|URL)"
            )
        result[type_.strip()] = result.get(type_.strip(), ()) + profiles
    return tuple(sorted(result.items()))


def _number(
    env: Mapping[str, str],
    name: str,
    convert: type[int] | type[float],
    what: str,
    changes: dict[str, object],
) -> float | None:
    """Read WHATMATTERS_<NAME> as a number into ``changes``; None when it is not set."""
    raw = env.get(f"WHATMATTERS_{name.upper()}")
    if raw is None:
        return None
    try:
        value: float = convert(raw)
    except ValueError as exc:
        raise ConfigError(f"WHATMATTERS_{name.upper()} must be {what}") from exc
    changes[name] = value
    return value


def _boolean(name: str, raw: str) -> bool:
    word = raw.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ConfigError(f"{name} must be true or false, not {raw!r}")


# what follows the base path in a resource's URL: /Type/id, perhaps /_history/version
_OWN_PATH = re.compile(
    r"/[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}(/_history/[A-Za-z0-9\-.]{1,64})?"
)


@functools.lru_cache(maxsize=16)
def _own_hosts(public_base_url: str | None, allowed_hosts: tuple[str, ...]) -> frozenset[str]:
    """The host names this service answers on (worked out once per configuration)."""
    from urllib.parse import urlsplit

    names = {host_name(h) for h in allowed_hosts if h.strip() != "*"}
    if public_base_url:
        names.add(host_name(urlsplit(public_base_url).netloc))
    return frozenset(names)


def host_name(host: str) -> str:
    """The name part of a Host header, without the port: ``[::1]:8080`` -> ``[::1]``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.partition(":")[0].rstrip(".")


@functools.lru_cache(maxsize=1024)
def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address) is this machine (localhost, 127.0.0.0/8, ::1);
    asked of every request's peer in the none mode, so remembered."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
