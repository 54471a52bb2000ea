"""Certificates as plain facts (subject, issuer, names, end), from PEM or DER. No I/O."""

from __future__ import annotations

import datetime
import functools

from cryptography import x509
from cryptography.x509.oid import NameOID

from apiservice_operator.core.model import Certificate


def _name(name: x509.Name) -> str:
    common = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return f"CN={common[0].value!s}" if common else name.rfc4514_string() or "(empty)"


def describe(cert: x509.Certificate) -> Certificate:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(str(n) for n in sans.get_values_for_type(x509.DNSName)) + tuple(
            str(a) for a in sans.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        names = ()
    ends = cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    return Certificate(_name(cert.subject), _name(cert.issuer), ends, names)


@functools.lru_cache(maxsize=1024)
def from_pem(data: bytes) -> tuple[Certificate, ...]:
    """Every certificate of a PEM bundle; () when it holds none that loads (resolve says why)."""
    try:
        return tuple(describe(c) for c in x509.load_pem_x509_certificates(data))
    except ValueError:
        return ()


@functools.lru_cache(maxsize=4096)
def from_der(data: bytes) -> Certificate | None:
    try:
        return describe(x509.load_der_x509_certificate(data))
    except ValueError:
        return None


def seconds_left(not_after: str, now: str) -> float:
    """From `now` until `not_after` (both RFC 3339); negative once it has passed."""
    return (_parse(not_after) - _parse(now)).total_seconds()


def _parse(rfc3339: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
