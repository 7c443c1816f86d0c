"""Seller webhooks: how a delivery is signed (Standard Webhooks), and where it may go (no SSRF).

Signing (https://www.standardwebhooks.com, its reference library ``standardwebhooks``): every
delivery carries ``webhook-id`` (stable across retries of one delivery, so the receiver dedupes),
``webhook-timestamp`` (when this attempt was sent, so the receiver rejects replays) and, when the
seller has a secret, ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``,
one per secret, space-separated (two while a secret is being rotated). A secret stored in the
spec's form (``whsec_<base64 key>``) is used as it is; any other stored secret is a plain one of
the releases before Standard Webhooks, whose key is its UTF-8 bytes (its spec form is
``whsec_`` + base64 of them: ``spec_secret``).

Targets: a webhook URL must be https (unless SELLER_WEBHOOK_REQUIRE_HTTPS is off, in development)
and its host must resolve to global addresses only: not loopback, private, link-local (cloud
metadata), multicast, reserved, unspecified or otherwise not globally routable, nor an IPv6 address
embedding one (IPv4-mapped, 6to4, NAT64). Hosts named in SELLER_WEBHOOK_ALLOWED_HOSTS skip both
checks (tests and development). ``validate_seller_webhook_url`` checks when a seller is saved;
``SafeWebhookTransport`` checks again at delivery, on the addresses it then connects to: it resolves
the host itself, refuses if any address is internal, and connects to a checked address (never
resolving again) with the original host in the Host header and as the TLS server name.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from django.conf import settings
from django.core.exceptions import ValidationError
from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks prefix of a secret, not a secret
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class UnsafeWebhookTarget(Exception):
    """A webhook URL that must not be called (internal address, plain http in production).

    Not an OSError nor an httpx error: it is permanent (marketplace.events.errors.TRANSIENT_ERRORS).
    """


# --- signing ---------------------------------------------------------------------------------


def signing_key(secret: str) -> bytes:
    """The HMAC key of a stored secret: a ``whsec_`` secret's base64 payload, else the secret's UTF-8 bytes."""
    if secret.startswith(SECRET_PREFIX):
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    return secret.encode()


def spec_secret(secret: str) -> str:
    """The stored secret in the spec's ``whsec_`` form: what a receiver gives ``standardwebhooks.Webhook``."""
    return SECRET_PREFIX + base64.b64encode(signing_key(secret)).decode()


def validate_webhook_secret(secret: str) -> None:
    """A ``whsec_`` secret must carry a non-empty base64 key (any other secret is a plain one)."""
    if not secret.startswith(SECRET_PREFIX):
        return
    try:
        key = signing_key(secret)
    except (binascii.Error, ValueError):
        raise ValidationError("a whsec_ secret is whsec_ followed by base64", code="invalid_webhook_secret") from None
    if not key:
        raise ValidationError("a whsec_ secret needs a key after whsec_", code="invalid_webhook_secret")


def signature_headers(*, msg_id: str, body: bytes, secrets: Iterable[str], at: float | None = None) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` and, if there is any secret, ``webhook-signature`` with one
    ``v1,`` signature per secret (the first is the current one; a second, during rotation, the next)."""
    timestamp = datetime.fromtimestamp(int(time.time() if at is None else at), tz=UTC)
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(timestamp.timestamp()))}
    signatures = [Webhook(signing_key(secret)).sign(msg_id, timestamp, body) for secret in secrets if secret]
    if signatures:
        headers["webhook-signature"] = " ".join(signatures)
    return headers


def legacy_signature(*, secret: str, body: bytes) -> str:
    """The pre-Standard-Webhooks ``X-Marketplace-Signature`` value (HMAC of the body alone: replayable).
    Still sent for the receivers that check it; deprecated (docs/events.md)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# --- where a webhook may go ------------------------------------------------------------------


@dataclass(frozen=True)
class TargetPolicy:
    allowed_hosts: frozenset[str]
    require_https: bool

    @classmethod
    def from_settings(cls) -> TargetPolicy:
        return cls(
            allowed_hosts=frozenset(_host_key(host) for host in settings.SELLER_WEBHOOK_ALLOWED_HOSTS if host),
            require_https=settings.SELLER_WEBHOOK_REQUIRE_HTTPS,
        )

    def allows(self, host: str) -> bool:
        return _host_key(host) in self.allowed_hosts


def _host_key(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def address_refusal(address: str) -> str | None:
    """Why a webhook must not connect to ``address`` ("a private address"), or None if it is global."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:  # ::ffff:a.b.c.d is that IPv4 address, and only it decides
            refusal = address_refusal(str(ip.ipv4_mapped))
            return f"an IPv6 form of {ip.ipv4_mapped}, {refusal}" if refusal else None
        nat64 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None
        embedded = ip.sixtofour or nat64  # reaches that IPv4 address through a gateway
        refusal = address_refusal(str(embedded)) if embedded else None
        if refusal:
            return f"an IPv6 form of {embedded}, {refusal}"
    for kind, test in [
        ("an unspecified address", ip.is_unspecified),
        ("a loopback address", ip.is_loopback),
        ("a link-local address", ip.is_link_local),
        ("a multicast address", ip.is_multicast),
        ("a reserved address", ip.is_reserved),
        ("a private address", ip.is_private),
        ("not a global address", not ip.is_global),
    ]:
        if test:
            return kind
    return None


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in the resolver's order, without repeats (socket.gaierror if none)."""
    addresses = list(dict.fromkeys(str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)))
    if not addresses:
        raise socket.gaierror(socket.EAI_NONAME, f"no address for {host}")
    return addresses


def checked_addresses(url: httpx.URL, policy: TargetPolicy) -> list[str] | None:
    """The addresses a webhook to ``url`` may connect to: None for an allowed host (not checked);
    raises UnsafeWebhookTarget for plain http where https is required, or for a host with any
    internal address, and socket.gaierror for a host that does not resolve."""
    host = url.host
    if policy.allows(host):
        return None
    if url.scheme not in _DEFAULT_PORTS:
        raise UnsafeWebhookTarget(f"webhook URL scheme {url.scheme!r} is neither https nor http")
    if policy.require_https and url.scheme != "https":
        raise UnsafeWebhookTarget(f"webhook URL must be https, not {url.scheme}")
    addresses = resolve(host, url.port or _DEFAULT_PORTS[url.scheme])
    for address in addresses:
        refusal = address_refusal(address)
        if refusal:
            raise UnsafeWebhookTarget(f"webhook host {host} resolves to {address}, {refusal}")
    return addresses


def validate_seller_webhook_url(value: str) -> None:
    """Model field validator (so the admin and any serializer): the URL must pass the delivery-time check now."""
    if not value:
        return
    try:
        url = httpx.URL(value)
        checked_addresses(url, TargetPolicy.from_settings())
    except httpx.InvalidURL as exc:
        raise ValidationError(f"not a valid URL: {exc}", code="invalid_webhook_url") from None
    except UnsafeWebhookTarget as exc:
        raise ValidationError(str(exc), code="unsafe_webhook_url") from None
    except (OSError, UnicodeError) as exc:
        raise ValidationError(
            f"webhook host {url.host} does not resolve: {exc}", code="unresolvable_webhook_url"
        ) from None


class SafeWebhookTransport(httpx.BaseTransport):
    """An httpx transport that connects only to checked addresses (see the module docstring).

    The host is resolved here, every address checked, and the request sent to an address itself
    (httpcore connects to an IP literal without resolving it again), its Host header and TLS server
    name (the ``sni_hostname`` extension, also what the certificate is verified against) staying
    the original host. Addresses are tried in the resolver's order while a connection is refused.
    A refused target raises UnsafeWebhookTarget; a host that does not resolve, httpx.ConnectError.
    """

    def __init__(self, policy: TargetPolicy | None = None, **transport_options):
        self.policy = policy or TargetPolicy.from_settings()
        self._transport = httpx.HTTPTransport(**transport_options)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            addresses = checked_addresses(request.url, self.policy)
        except (OSError, UnicodeError) as exc:
            raise httpx.ConnectError(
                f"webhook host {request.url.host} does not resolve: {exc}", request=request
            ) from exc
        if addresses is None:
            return self._transport.handle_request(request)
        for index, address in enumerate(addresses):
            pinned = httpx.Request(
                request.method,
                request.url.copy_with(host=address),
                headers=request.headers,  # Host: the original host (httpx set it from the URL)
                stream=request.stream,
                extensions={**request.extensions, "sni_hostname": request.url.host},
            )
            try:
                return self._transport.handle_request(pinned)
            except httpx.ConnectError:
                if index == len(addresses) - 1:
                    raise
        raise AssertionError("unreachable: resolve() returns at least one address")

    def close(self) -> None:
        self._transport.close()
