"""SMART Backend Services client: signed client assertions, our JWKS and cached access tokens.

https://hl7.org/fhir/smart-app-launch/backend-services.html, with the client assertion of
RFC 7523 and key ids that are RFC 7638 JWK thumbprints.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = ("RS384", "ES384")
# Backend Services: the assertion's exp "SHALL be no more than five minutes in the future".
MAX_ASSERTION_LIFETIME = 300
# RFC 6749 makes expires_in optional; five minutes is what SMART servers commonly grant.
DEFAULT_EXPIRES_IN = 300.0
MIN_RSA_BITS = 2048
# The members RFC 7638 hashes, per key type, already in the lexicographic order it requires.
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y")}

TokenPost = Callable[[str, dict[str, str]], tuple[int, dict[str, Any]]]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class SmartError(Exception):
    """An access token cannot be obtained from the partner's token endpoint."""


def _b64url(data: bytes) -> str:
    """Encode bytes as base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_uint(value: int, length: int | None = None) -> str:
    """Encode an unsigned integer as big-endian base64url, minimal or of a fixed length."""
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return _b64url(value.to_bytes(size, "big"))


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """Return the RFC 7638 SHA-256 thumbprint of a public RSA or EC JWK, base64url unpadded."""
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None:
        raise ValueError(f"cannot compute a thumbprint of a JWK with kty {jwk.get('kty')!r}")
    canonical = json.dumps(
        {name: jwk[name] for name in members}, separators=(",", ":"), sort_keys=True
    )
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def _public_members(key: PrivateKey) -> dict[str, Any]:
    """Return the public JWK members (kty and key parameters) of a private key."""
    if isinstance(key, rsa.RSAPrivateKey):
        numbers = key.public_key().public_numbers()
        return {"kty": "RSA", "n": _b64url_uint(numbers.n), "e": _b64url_uint(numbers.e)}
    point = key.public_key().public_numbers()
    # from_pem_file admits only P-384 EC keys, so the curve name is fixed.
    # RFC 7518 section 6.2.1.2: coordinates are the full field size, leading zeros kept.
    size = (key.curve.key_size + 7) // 8
    return {
        "kty": "EC",
        "crv": "P-384",
        "x": _b64url_uint(point.x, size),
        "y": _b64url_uint(point.y, size),
    }


def _check_key(key: object, algorithm: str, path: Path) -> PrivateKey:
    """Return the key if it can sign with the algorithm, else raise ValueError naming the file."""
    if algorithm == "RS384":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path}: RS384 needs an RSA private key, found {_kind(key)}")
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(
                f"{path}: RS384 needs an RSA key of at least {MIN_RSA_BITS} bits, "
                f"found {key.key_size} bits"
            )
        return key
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP384R1):
        raise ValueError(f"{path}: ES384 needs an EC P-384 private key, found {_kind(key)}")
    return key


def _kind(key: object) -> str:
    """Describe a private key's type for an error message."""
    if isinstance(key, rsa.RSAPrivateKey):
        return f"an RSA key of {key.key_size} bits"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return f"an EC key on curve {key.curve.name}"
    return f"a {type(key).__name__}"


@dataclass(frozen=True)
class SigningKey:
    """One private key we sign client assertions with, named by its JWK thumbprint."""

    kid: str
    algorithm: str  # RS384 | ES384
    # Kept out of repr so logging a key never prints more than its id; equality is by kid.
    private_key: PrivateKey = field(repr=False, compare=False)

    @classmethod
    def from_pem_file(cls, path: Path, algorithm: str) -> SigningKey:
        """Load an unencrypted PEM private key (PKCS8 or traditional) for the algorithm."""
        if algorithm not in ALGORITHMS:
            raise ValueError(
                f"{path}: algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}"
            )
        data = path.read_bytes()
        try:
            loaded = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            # TypeError is how cryptography reports an encrypted key loaded without a password.
            raise ValueError(f"{path}: not an unencrypted PEM private key ({exc})") from exc
        key = _check_key(loaded, algorithm, path)
        return cls(kid=jwk_thumbprint(_public_members(key)), algorithm=algorithm, private_key=key)

    def public_jwk(self) -> dict[str, Any]:
        """Return the public JWK of this key, as published in our JWKS."""
        return {
            **_public_members(self.private_key),
            "kid": self.kid,
            "alg": self.algorithm,
            "use": "sig",  # RFC 7517 section 4.3: not together with key_ops
        }


def jwks(keys: Iterable[SigningKey]) -> dict[str, Any]:
    """Return a JWK Set of the keys' public halves, each kid once."""
    published: dict[str, dict[str, Any]] = {}
    for key in keys:
        published.setdefault(key.kid, key.public_jwk())
    return {"keys": list(published.values())}


def client_assertion(
    client_id: str,
    token_url: str,
    key: SigningKey,
    *,
    now: float | None = None,
    lifetime: int = 300,
) -> str:
    """Sign an RFC 7523 client assertion for the token endpoint, valid for lifetime seconds."""
    if not 0 < lifetime <= MAX_ASSERTION_LIFETIME:
        raise ValueError(
            f"assertion lifetime must be 1 to {MAX_ASSERTION_LIFETIME} seconds, not {lifetime}"
        )
    issued_at = int(time.time() if now is None else now)
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "exp": issued_at + lifetime,
        "iat": issued_at,
        # Servers reject a jti they have seen, so every assertion gets a fresh random one.
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(
        claims,
        key.private_key,
        algorithm=key.algorithm,
        headers={"kid": key.kid, "typ": "JWT"},
    )


class PartnerAuth(Protocol):
    """How requests to a partner's FHIR server are authorized."""

    def authorization(self) -> str | None:
        """Return the Authorization header value, or None to send none."""
        ...

    def invalidate(self) -> None:
        """Forget any cached credential after the resource server answered 401."""
        ...


class NoAuth:
    """A partner that needs no Authorization header."""

    def authorization(self) -> None:
        """Return None: no header is sent."""
        return None

    def invalidate(self) -> None:
        """Do nothing: there is no credential to forget."""


class StaticBearer:
    """A partner that issued us a long-lived bearer token out of band."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        # The token is a secret; it must not end up in logs through repr.
        return "StaticBearer(token=***)"

    def authorization(self) -> str:
        """Return the Bearer header value of the configured token."""
        return f"Bearer {self._token}"

    def invalidate(self) -> None:
        """Do nothing: a static token cannot be renewed."""


class BackendServicesAuth:
    """Access tokens from a SMART Backend Services token endpoint, cached until near expiry."""

    def __init__(
        self,
        client_id: str,
        token_url: str,
        key: SigningKey,
        scope: str,
        post: TokenPost,
        *,
        clock: Callable[[], float] = time.time,
        margin: float = 30.0,
    ) -> None:
        self.client_id = client_id
        self.token_url = token_url
        self.key = key
        self.scope = scope
        self._post = post
        self._clock = clock
        self._margin = margin
        # One lock around check-and-fetch, so concurrent senders share a single token request.
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0

    def __repr__(self) -> str:
        return f"BackendServicesAuth(client_id={self.client_id!r}, token_url={self.token_url!r})"

    def authorization(self) -> str:
        """Return "Bearer <access token>", requesting a new token when none is fresh enough."""
        with self._lock:
            if self._token is None or self._clock() >= self._expires_at - self._margin:
                self._token, self._expires_at = self._request_token()
            return f"Bearer {self._token}"

    def invalidate(self) -> None:
        """Forget the cached token so that the next authorization() requests a new one."""
        with self._lock:
            self._token = None
            self._expires_at = 0.0

    def _request_token(self) -> tuple[str, float]:
        """Request an access token and return it with the time it expires."""
        # Read before the request: the token's lifetime starts no later than this moment,
        # so the computed expiry errs on the early side.
        started = self._clock()
        form = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": client_assertion(
                self.client_id, self.token_url, self.key, now=started
            ),
        }
        status, body = self._post(self.token_url, form)
        if status != 200:
            error = body.get("error") or "no error code"
            description = body.get("error_description") or "no description"
            raise SmartError(
                f"token endpoint {self.token_url} answered HTTP {status}: {error}: {description}"
            )
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise SmartError(f"token endpoint {self.token_url} returned no access_token")
        token_type = body.get("token_type")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise SmartError(
                f"token endpoint {self.token_url} returned token_type {token_type!r}, not bearer"
            )
        return token, started + _expires_in(body.get("expires_in"), self.token_url)


def _expires_in(value: object, token_url: str) -> float:
    """Return the token lifetime in seconds from an expires_in value, defaulting when absent."""
    if value is None:
        return DEFAULT_EXPIRES_IN
    # bool is an int in Python, but true is no lifetime.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    # Some servers send the number as a string; accept it rather than fail the exchange.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise SmartError(f"token endpoint {token_url} returned expires_in {value!r}, not a number")


def requests_post(session: requests.Session, timeout: float) -> TokenPost:
    """Build a form-encoded POST for BackendServicesAuth from a requests session."""

    def post(url: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """POST the form and return the status with the JSON object body, or {}."""
        try:
            response = session.post(
                url, data=form, headers={"Accept": "application/json"}, timeout=timeout
            )
        except requests.RequestException as exc:
            raise SmartError(f"token endpoint {url} could not be reached: {exc}") from exc
        try:
            body = response.json()
        except ValueError:
            # An error page in HTML still has a status worth reporting.
            return response.status_code, {}
        return response.status_code, body if isinstance(body, dict) else {}

    return post
