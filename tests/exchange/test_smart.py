"""SMART Backend Services client: keys and JWKS, client assertions, and access tokens obtained
from a real token endpoint that verifies our assertions through the published JWKS."""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from service.exchange.smart import (
    BackendServicesAuth,
    NoAuth,
    PartnerAuth,
    SigningKey,
    SmartError,
    StaticBearer,
    TokenPost,
    client_assertion,
    jwk_thumbprint,
    jwks,
    requests_post,
)
from tests.exchange.token_endpoint import JWT_BEARER, JwksHost, TokenEndpoint

CLIENT_ID = "whatmatters-test-client"
SCOPE = "system/Goal.rs system/Observation.rs"
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
PKCS8 = serialization.PrivateFormat.PKCS8
TRADITIONAL = serialization.PrivateFormat.TraditionalOpenSSL

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def write_pem(
    path: Path,
    key: PrivateKey,
    fmt: serialization.PrivateFormat = PKCS8,
    password: bytes | None = None,
) -> Path:
    """Write a private key as PEM and return the path."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, fmt, encryption))
    return path


def b64url_uint(value: int, size: int) -> str:
    """Encode an integer in size big-endian bytes as unpadded base64url."""
    return base64.urlsafe_b64encode(value.to_bytes(size, "big")).rstrip(b"=").decode()


def weak_rsa_key() -> rsa.RSAPrivateKey:
    """Generate an RSA key too short to sign client assertions with."""
    # Deliberately breakable: the test checks that such a key is refused.
    return rsa.generate_private_key(65537, 1024)  # noqa: S505


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeTokenEndpoint:
    """A token endpoint double that records requests and answers with canned responses."""

    def __init__(self, *answers: tuple[int, dict[str, Any]]) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[str, dict[str, str]]] = []

    def __call__(self, url: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        self.requests.append((url, form))
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


@pytest.fixture(scope="module")
def pem_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the PEM files most tests sign with (RSA generation is slow, so once)."""
    folder = tmp_path_factory.mktemp("keys")
    write_pem(folder / "rsa2048.pem", rsa.generate_private_key(65537, 2048))
    write_pem(folder / "rsa3072.pem", rsa.generate_private_key(65537, 3072))
    write_pem(folder / "other2048.pem", rsa.generate_private_key(65537, 2048))
    write_pem(folder / "ec384.pem", ec.generate_private_key(ec.SECP384R1()))
    return folder


@pytest.fixture(scope="module")
def rsa_key(pem_dir: Path) -> SigningKey:
    """An RS384 key whose public half the test JWKS publishes."""
    return SigningKey.from_pem_file(pem_dir / "rsa2048.pem", "RS384")


@pytest.fixture(scope="module")
def ec_key(pem_dir: Path) -> SigningKey:
    """An ES384 key whose public half the test JWKS publishes."""
    return SigningKey.from_pem_file(pem_dir / "ec384.pem", "ES384")


@pytest.fixture(scope="module")
def rsa3072_key(pem_dir: Path) -> SigningKey:
    """A 3072-bit RS384 key whose public half the test JWKS publishes."""
    return SigningKey.from_pem_file(pem_dir / "rsa3072.pem", "RS384")


@pytest.fixture(scope="module")
def other_key(pem_dir: Path) -> SigningKey:
    """An RS384 key the JWKS does not publish."""
    return SigningKey.from_pem_file(pem_dir / "other2048.pem", "RS384")


@pytest.fixture
def jwks_host(
    rsa_key: SigningKey, rsa3072_key: SigningKey, ec_key: SigningKey
) -> Iterator[JwksHost]:
    """Our JWKS as a partner's authorization server fetches it."""
    with JwksHost(jwks([rsa_key, rsa3072_key, ec_key])) as host:
        yield host


@pytest.fixture
def endpoint(jwks_host: JwksHost) -> Iterator[TokenEndpoint]:
    """A partner's token endpoint that knows our client id and JWKS URL."""
    with TokenEndpoint(jwks_host.url, CLIENT_ID) as server:
        yield server


@pytest.fixture
def post() -> Iterator[TokenPost]:
    """The real requests-based form POST."""
    with requests.Session() as session:
        yield requests_post(session, timeout=10)


def auth_for(
    endpoint: TokenEndpoint, key: SigningKey, post: TokenPost, **kwargs: Any
) -> BackendServicesAuth:
    """Build a client of the endpoint signing with the key."""
    return BackendServicesAuth(CLIENT_ID, endpoint.url, key, SCOPE, post, **kwargs)


# --- keys and JWKS ---------------------------------------------------------------------------


def test_thumbprint_matches_the_rfc_7638_example() -> None:
    # RFC 7638 section 3.1: the example RSA key and its SHA-256 thumbprint.
    example = {
        "kty": "RSA",
        "n": (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1"
            "L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4"
            "QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbO"
            "pbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csF"
            "Cur-kEgU8awapJzKnqDKgw"
        ),
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(example) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_rsa_kid_is_the_thumbprint_of_the_public_key(rsa_key: SigningKey) -> None:
    assert isinstance(rsa_key.private_key, rsa.RSAPrivateKey)
    numbers = rsa_key.private_key.public_key().public_numbers()
    n = b64url_uint(numbers.n, (numbers.n.bit_length() + 7) // 8)
    canonical = f'{{"e":"AQAB","kty":"RSA","n":"{n}"}}'
    expected = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest())
    assert rsa_key.kid == expected.rstrip(b"=").decode()
    assert rsa_key.public_jwk()["n"] == n


def test_ec_kid_is_the_thumbprint_of_the_public_key(ec_key: SigningKey) -> None:
    assert isinstance(ec_key.private_key, ec.EllipticCurvePrivateKey)
    point = ec_key.private_key.public_key().public_numbers()
    # P-384 coordinates are always 48 bytes, leading zeros included (RFC 7518 6.2.1.2).
    x, y = b64url_uint(point.x, 48), b64url_uint(point.y, 48)
    canonical = f'{{"crv":"P-384","kty":"EC","x":"{x}","y":"{y}"}}'
    expected = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest())
    assert ec_key.kid == expected.rstrip(b"=").decode()
    assert (ec_key.public_jwk()["x"], ec_key.public_jwk()["y"]) == (x, y)


@pytest.mark.parametrize(
    ("make", "algorithm"),
    [
        (lambda: rsa.generate_private_key(65537, 2048), "RS384"),
        (lambda: ec.generate_private_key(ec.SECP384R1()), "ES384"),
    ],
    ids=["rsa", "ec"],
)
def test_pkcs8_and_traditional_pem_give_the_same_key(
    tmp_path: Path, make: Callable[[], PrivateKey], algorithm: str
) -> None:
    key = make()
    pkcs8 = SigningKey.from_pem_file(write_pem(tmp_path / "a.pem", key, PKCS8), algorithm)
    traditional = SigningKey.from_pem_file(
        write_pem(tmp_path / "b.pem", key, TRADITIONAL), algorithm
    )
    assert pkcs8 == traditional
    assert pkcs8.public_jwk() == traditional.public_jwk()


def test_public_jwk_describes_a_verification_key(rsa_key: SigningKey, ec_key: SigningKey) -> None:
    assert rsa_key.public_jwk() == {
        "kty": "RSA",
        "n": rsa_key.public_jwk()["n"],
        "e": "AQAB",
        "kid": rsa_key.kid,
        "alg": "RS384",
        "use": "sig",
    }
    assert set(ec_key.public_jwk()) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
    assert ec_key.public_jwk()["crv"] == "P-384"
    assert ec_key.public_jwk()["alg"] == "ES384"


def test_jwks_has_no_private_members_and_each_kid_once(
    rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    published = jwks([rsa_key, ec_key, rsa_key])
    assert [key["kid"] for key in published["keys"]] == [rsa_key.kid, ec_key.kid]
    for key in published["keys"]:
        assert PRIVATE_MEMBERS.isdisjoint(key), key
    # Every published key is one PyJWT can load and that belongs to the private key.
    for signing_key, jwk in zip((rsa_key, ec_key), published["keys"], strict=True):
        token = client_assertion(CLIENT_ID, "https://as.example/token", signing_key)
        claims = jwt.decode(
            token, jwt.PyJWK(jwk).key, algorithms=[jwk["alg"]], audience="https://as.example/token"
        )
        assert claims["iss"] == CLIENT_ID


def test_signing_key_repr_does_not_show_the_private_key(rsa_key: SigningKey) -> None:
    assert "private_key" not in repr(rsa_key)
    assert rsa_key.kid in repr(rsa_key)


@pytest.mark.parametrize(
    ("make", "algorithm", "reason"),
    [
        (lambda: ec.generate_private_key(ec.SECP384R1()), "RS384", "RS384 needs an RSA"),
        (weak_rsa_key, "RS384", "at least 2048 bits"),
        (lambda: rsa.generate_private_key(65537, 2048), "ES384", "ES384 needs an EC P-384"),
        (lambda: ec.generate_private_key(ec.SECP256R1()), "ES384", "curve secp256r1"),
        (lambda: ed25519.Ed25519PrivateKey.generate(), "RS384", "RS384 needs an RSA"),
        (lambda: rsa.generate_private_key(65537, 2048), "RS256", "not one of RS384, ES384"),
    ],
    ids=["ec-for-rs384", "rsa-1024", "rsa-for-es384", "p256-for-es384", "ed25519", "rs256"],
)
def test_key_that_does_not_fit_the_algorithm_is_refused_naming_the_file(
    tmp_path: Path, make: Callable[[], PrivateKey], algorithm: str, reason: str
) -> None:
    path = write_pem(tmp_path / "partner-key.pem", make())
    with pytest.raises(ValueError, match=re.escape(str(path))) as excinfo:
        SigningKey.from_pem_file(path, algorithm)
    assert reason in str(excinfo.value)


def test_encrypted_or_malformed_pem_is_refused_naming_the_file(tmp_path: Path) -> None:
    encrypted = write_pem(
        tmp_path / "encrypted.pem", ec.generate_private_key(ec.SECP384R1()), PKCS8, b"secret"
    )
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    for path in (encrypted, garbage):
        with pytest.raises(ValueError, match=re.escape(str(path))) as excinfo:
            SigningKey.from_pem_file(path, "ES384")
        assert "not an unencrypted PEM private key" in str(excinfo.value)


# --- client assertions -----------------------------------------------------------------------


@pytest.mark.parametrize("which", ["rsa", "ec"])
def test_assertion_claims_follow_backend_services(
    which: str, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    key = rsa_key if which == "rsa" else ec_key
    as_url = "https://ehr.example/oauth/token"
    now = 1_700_000_000.5
    assertion = client_assertion(CLIENT_ID, as_url, key, now=now, lifetime=240)
    assert jwt.get_unverified_header(assertion) == {
        "alg": key.algorithm,
        "kid": key.kid,
        "typ": "JWT",
    }
    claims = jwt.decode(
        assertion,
        jwt.PyJWK(key.public_jwk()).key,
        algorithms=[key.algorithm],
        audience=as_url,
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims == {
        "iss": CLIENT_ID,
        "sub": CLIENT_ID,
        "aud": as_url,
        "iat": 1_700_000_000,
        "exp": 1_700_000_240,
        "jti": claims["jti"],
    }
    assert re.fullmatch(r"[0-9a-f]{32}", claims["jti"])


def test_every_assertion_has_a_fresh_jti(rsa_key: SigningKey) -> None:
    jtis = {
        jwt.decode(
            client_assertion(CLIENT_ID, "https://as.example/token", rsa_key, now=1000.0),
            options={"verify_signature": False},
        )["jti"]
        for _ in range(20)
    }
    assert len(jtis) == 20


def test_assertion_lifetime_defaults_to_the_five_minute_maximum(rsa_key: SigningKey) -> None:
    claims = jwt.decode(
        client_assertion(CLIENT_ID, "https://as.example/token", rsa_key, now=1000.0),
        options={"verify_signature": False},
    )
    assert claims["exp"] - claims["iat"] == 300


@pytest.mark.parametrize("lifetime", [301, 3600, 0, -5])
def test_assertion_lifetime_over_five_minutes_is_refused(
    rsa_key: SigningKey, lifetime: int
) -> None:
    with pytest.raises(ValueError, match="lifetime must be 1 to 300 seconds"):
        client_assertion(CLIENT_ID, "https://as.example/token", rsa_key, lifetime=lifetime)


# --- tokens from a real endpoint -------------------------------------------------------------


@pytest.mark.parametrize("which", ["rsa2048", "rsa3072", "ec384"])
def test_endpoint_verifies_rs384_and_es384_assertions_through_the_jwks(
    which: str,
    rsa_key: SigningKey,
    rsa3072_key: SigningKey,
    ec_key: SigningKey,
    endpoint: TokenEndpoint,
    jwks_host: JwksHost,
    post: TokenPost,
) -> None:
    key = {"rsa2048": rsa_key, "rsa3072": rsa3072_key, "ec384": ec_key}[which]
    header = auth_for(endpoint, key, post).authorization()
    assert endpoint.rejections == []
    assert header == f"Bearer {endpoint.issued[0]}"
    assert endpoint.accepts(header)
    assert jwks_host.fetches >= 1


def test_token_request_follows_backend_services(rsa_key: SigningKey) -> None:
    as_url = "https://ehr.example/oauth/token"
    fake = FakeTokenEndpoint((200, {"access_token": "t1", "token_type": "bearer"}))
    auth = BackendServicesAuth(CLIENT_ID, as_url, rsa_key, SCOPE, fake)
    assert auth.authorization() == "Bearer t1"
    [(url, form)] = fake.requests
    assert url == as_url
    assert set(form) == {"grant_type", "scope", "client_assertion_type", "client_assertion"}
    assert form["grant_type"] == "client_credentials"
    assert form["scope"] == SCOPE
    assert form["client_assertion_type"] == JWT_BEARER
    claims = jwt.decode(
        form["client_assertion"],
        jwt.PyJWK(rsa_key.public_jwk()).key,
        algorithms=["RS384"],
        audience=as_url,
    )
    assert claims["iss"] == claims["sub"] == CLIENT_ID


def test_cached_token_is_reused(
    rsa_key: SigningKey, endpoint: TokenEndpoint, post: TokenPost
) -> None:
    auth = auth_for(endpoint, rsa_key, post)
    headers = {auth.authorization() for _ in range(5)}
    assert len(endpoint.issued) == 1
    assert headers == {f"Bearer {endpoint.issued[0]}"}


def test_token_is_refreshed_within_margin_of_expiry(
    rsa_key: SigningKey, jwks_host: JwksHost, post: TokenPost
) -> None:
    # The clock starts in the past so that the assertions it dates stay valid for the endpoint.
    clock = FakeClock(time.time() - 100)
    with TokenEndpoint(jwks_host.url, CLIENT_ID, expires_in=120) as endpoint:
        auth = auth_for(endpoint, rsa_key, post, clock=clock, margin=30.0)
        first = auth.authorization()
        clock.now += 89  # 31 s left: more than the margin
        assert auth.authorization() == first
        assert len(endpoint.issued) == 1
        clock.now += 1  # 30 s left: within the margin
        second = auth.authorization()
        assert len(endpoint.issued) == 2
        assert second == f"Bearer {endpoint.issued[1]}" != first


def test_missing_expires_in_means_five_minutes(rsa_key: SigningKey) -> None:
    clock = FakeClock(1000.0)
    fake = FakeTokenEndpoint(
        (200, {"access_token": "t1", "token_type": "bearer"}),
        (200, {"access_token": "t2", "token_type": "bearer"}),
    )
    auth = BackendServicesAuth(
        CLIENT_ID, "https://as.example/token", rsa_key, SCOPE, fake, clock=clock
    )
    assert auth.authorization() == "Bearer t1"
    clock.now = 1269.0
    assert auth.authorization() == "Bearer t1"
    clock.now = 1270.0  # 300 s lifetime minus the default 30 s margin
    assert auth.authorization() == "Bearer t2"
    assert len(fake.requests) == 2


def test_invalidate_forces_a_new_token(
    ec_key: SigningKey, endpoint: TokenEndpoint, post: TokenPost
) -> None:
    auth = auth_for(endpoint, ec_key, post)
    first = auth.authorization()
    auth.invalidate()
    second = auth.authorization()
    assert len(endpoint.issued) == 2
    assert first == f"Bearer {endpoint.issued[0]}"
    assert second == f"Bearer {endpoint.issued[1]}"
    # The second request carried a fresh jti, or the endpoint would have refused it.
    assert endpoint.rejections == []


def test_concurrent_callers_share_one_token_request(
    rsa_key: SigningKey, endpoint: TokenEndpoint, post: TokenPost
) -> None:
    def slow_post(url: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        # Widen the window in which an unlocked client would send a second request.
        time.sleep(0.05)
        return post(url, form)

    auth = auth_for(endpoint, rsa_key, slow_post)
    start = threading.Barrier(8)
    headers: list[str] = []

    def call() -> None:
        start.wait()
        headers.append(auth.authorization())

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(endpoint.issued) == 1
    assert headers == [f"Bearer {endpoint.issued[0]}"] * 8


def test_replayed_assertion_is_rejected_by_the_endpoint(
    rsa_key: SigningKey, endpoint: TokenEndpoint, post: TokenPost
) -> None:
    form = {
        "grant_type": "client_credentials",
        "scope": SCOPE,
        "client_assertion_type": JWT_BEARER,
        "client_assertion": client_assertion(CLIENT_ID, endpoint.url, rsa_key),
    }
    assert post(endpoint.url, form)[0] == 200
    status, body = post(endpoint.url, form)
    assert status == 401
    assert body["error"] == "invalid_client"
    assert "already used" in body["error_description"]
    assert len(endpoint.issued) == 1


def _tamper_signature(post: TokenPost) -> TokenPost:
    """Wrap a POST so the assertion's signature changes in transit."""

    def tampered(url: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        head, body, signature = form["client_assertion"].split(".")
        middle = len(signature) // 2
        flipped = "A" if signature[middle] != "A" else "B"
        signature = signature[:middle] + flipped + signature[middle + 1 :]
        return post(url, {**form, "client_assertion": f"{head}.{body}.{signature}"})

    return tampered


def _tampered_signature(
    endpoint: TokenEndpoint, keys: dict[str, SigningKey], post: TokenPost
) -> BackendServicesAuth:
    return auth_for(endpoint, keys["rsa"], _tamper_signature(post))


def _tampered_es384_signature(
    endpoint: TokenEndpoint, keys: dict[str, SigningKey], post: TokenPost
) -> BackendServicesAuth:
    return auth_for(endpoint, keys["ec"], _tamper_signature(post))


def _key_not_in_jwks(
    endpoint: TokenEndpoint, keys: dict[str, SigningKey], post: TokenPost
) -> BackendServicesAuth:
    return auth_for(endpoint, keys["other"], post)


def _wrong_key_under_published_kid(
    endpoint: TokenEndpoint, keys: dict[str, SigningKey], post: TokenPost
) -> BackendServicesAuth:
    impostor = SigningKey(keys["rsa"].kid, "RS384", keys["other"].private_key)
    return auth_for(endpoint, impostor, post)


def _wrong_audience(
    endpoint: TokenEndpoint, keys: dict[str, SigningKey], post: TokenPost
) -> BackendServicesAuth:
    other_url = endpoint.url.replace("/token", "/other/token")
    return BackendServicesAuth(
        CLIENT_ID, other_url, keys["rsa"], SCOPE, lambda _url, form: post(endpoint.url, form)
    )


def _wrong_client_id(
    endpoint: TokenEndpoint, keys: dict[str, SigningKey], post: TokenPost
) -> BackendServicesAuth:
    return BackendServicesAuth("someone-else", endpoint.url, keys["rsa"], SCOPE, post)


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (_tampered_signature, "InvalidSignatureError"),
        (_tampered_es384_signature, "InvalidSignatureError"),
        (_key_not_in_jwks, "no key"),
        (_wrong_key_under_published_kid, "InvalidSignatureError"),
        (_wrong_audience, "InvalidAudienceError"),
        (_wrong_client_id, "must both be"),
    ],
    ids=[
        "tampered-rs384",
        "tampered-es384",
        "unpublished-key",
        "wrong-key-same-kid",
        "wrong-aud",
        "wrong-client",
    ],
)
def test_rejected_assertion_raises_smart_error_with_the_endpoint_description(
    build: Callable[[TokenEndpoint, dict[str, SigningKey], TokenPost], BackendServicesAuth],
    reason: str,
    rsa_key: SigningKey,
    ec_key: SigningKey,
    other_key: SigningKey,
    endpoint: TokenEndpoint,
    post: TokenPost,
) -> None:
    auth = build(endpoint, {"rsa": rsa_key, "ec": ec_key, "other": other_key}, post)
    with pytest.raises(SmartError) as excinfo:
        auth.authorization()
    [description] = endpoint.rejections
    assert reason in description
    message = str(excinfo.value)
    assert description in message
    assert "HTTP 401" in message
    assert "invalid_client" in message
    assert endpoint.issued == []


def test_failed_token_request_is_not_cached(rsa_key: SigningKey) -> None:
    fake = FakeTokenEndpoint(
        (503, {}),
        (200, {"access_token": "t1", "token_type": "bearer", "expires_in": 3600}),
    )
    auth = BackendServicesAuth(CLIENT_ID, "https://as.example/token", rsa_key, SCOPE, fake)
    with pytest.raises(SmartError, match="HTTP 503"):
        auth.authorization()
    assert auth.authorization() == "Bearer t1"
    assert len(fake.requests) == 2


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (400, {"error": "invalid_scope", "error_description": "no Goal access"}, "no Goal access"),
        (500, {}, "HTTP 500: no error code"),
        (200, {"token_type": "bearer"}, "no access_token"),
        (200, {"access_token": "", "token_type": "bearer"}, "no access_token"),
        (200, {"access_token": "t", "token_type": "mac"}, "token_type 'mac'"),
        (200, {"access_token": "t"}, "token_type None"),
        (200, {"access_token": "t", "token_type": "bearer", "expires_in": "soon"}, "expires_in"),
    ],
    ids=["oauth-error", "server-error", "no-token", "empty-token", "mac", "no-type", "bad-expiry"],
)
def test_unusable_token_response_raises_smart_error(
    rsa_key: SigningKey, status: int, body: dict[str, Any], reason: str
) -> None:
    fake = FakeTokenEndpoint((status, body))
    auth = BackendServicesAuth(CLIENT_ID, "https://as.example/token", rsa_key, SCOPE, fake)
    with pytest.raises(SmartError, match=re.escape(reason)) as excinfo:
        auth.authorization()
    assert "https://as.example/token" in str(excinfo.value)


@pytest.mark.parametrize("token_type", ["Bearer", "BEARER"])
def test_token_type_bearer_is_case_insensitive(rsa_key: SigningKey, token_type: str) -> None:
    fake = FakeTokenEndpoint(
        (200, {"access_token": "t1", "token_type": token_type, "expires_in": "600"})
    )
    auth = BackendServicesAuth(CLIENT_ID, "https://as.example/token", rsa_key, SCOPE, fake)
    assert auth.authorization() == "Bearer t1"


def test_requests_post_reports_an_unreachable_endpoint_as_smart_error(
    jwks_host: JwksHost,
) -> None:
    stopped = TokenEndpoint(jwks_host.url, CLIENT_ID)
    stopped.stop()  # never started: its port is released and refuses connections
    with requests.Session() as session, pytest.raises(SmartError, match="could not be reached"):
        requests_post(session, timeout=5)(stopped.url, {"grant_type": "client_credentials"})


def test_requests_post_gives_an_empty_body_for_a_non_json_answer(
    jwks_host: JwksHost, post: TokenPost
) -> None:
    # The JWKS host does not implement POST; http.server answers 501 with an HTML page.
    assert post(jwks_host.url, {"grant_type": "client_credentials"}) == (501, {})


# --- the test endpoint is as strict as a real one --------------------------------------------


def _signed(key: SigningKey, claims: dict[str, Any]) -> str:
    """Sign arbitrary claims with the key, as a careless or hostile client might."""
    return jwt.encode(claims, key.private_key, algorithm=key.algorithm, headers={"kid": key.kid})


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"exp_offset": -60, "iat_offset": -360}, "ExpiredSignatureError"),
        ({"exp_offset": 600, "iat_offset": 0}, "more than 300 s"),
        ({"drop": "jti"}, "MissingRequiredClaimError"),
        ({"grant_type": "password"}, "not client_credentials"),
        ({"client_assertion_type": "urn:other"}, "client_assertion_type"),
    ],
    ids=["expired", "too-long", "no-jti", "grant-type", "assertion-type"],
)
def test_endpoint_rejects_what_backend_services_forbids(
    change: dict[str, Any],
    reason: str,
    rsa_key: SigningKey,
    endpoint: TokenEndpoint,
    post: TokenPost,
) -> None:
    now = int(time.time())
    claims = {
        "iss": CLIENT_ID,
        "sub": CLIENT_ID,
        "aud": endpoint.url,
        "iat": now + change.get("iat_offset", 0),
        "exp": now + change.get("exp_offset", 300),
        "jti": "j-" + str(now),
    }
    claims.pop(change.get("drop", ""), None)
    form = {
        "grant_type": change.get("grant_type", "client_credentials"),
        "scope": SCOPE,
        "client_assertion_type": change.get("client_assertion_type", JWT_BEARER),
        "client_assertion": _signed(rsa_key, claims),
    }
    status, body = post(endpoint.url, form)
    assert status in (400, 401)
    assert reason in body["error_description"]
    assert endpoint.issued == []


# --- other partner authorizations ------------------------------------------------------------


def test_static_bearer_and_no_auth_are_partner_auths() -> None:
    auths: list[PartnerAuth] = [StaticBearer("s3cr3t"), NoAuth()]
    for auth in auths:
        auth.invalidate()  # a no-op for both: nothing cached to forget
    assert [auth.authorization() for auth in auths] == ["Bearer s3cr3t", None]
    assert "s3cr3t" not in repr(auths[0])
