"""Secrets out of everything shown: backend URLs with their credentials masked.

Every message, log line, status or CLI output that names a backend URL passes it
through ``redact_url`` first; ``redact_text`` does the same for every URL inside a
longer text (a library's error message, a formatted log line), as a second line of
defence. Both adapters, the core and the CLI use these two functions, so a URL is
masked the same way everywhere.

What is masked (replaced by ``***``):

* the password of ``user:password@`` (the user name stays: it says which account was
  refused);
* a bare ``secret@`` user part with no password, which NATS reads as a token (on
  Redis it is a user name without a password, rare enough to mask too);
* the value of every query option not known to be harmless: a known option whose name
  says it holds a secret (``ssl_password``, ``token``, ...), and any option this module
  does not know (a misspelt ``?ssl_pasword=`` must not leak either). Known harmless
  options (``prefix``, ``db``, timeouts, file paths such as ``?tls_key=/path/key.pem``
  or ``?creds=/path/user.creds``, which name where a secret is, not the secret) stay
  visible.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

__all__ = ["MASK", "SAFE_OPTIONS", "is_secret_option", "redact_text", "redact_url"]

MASK = "***"

# Query options whose values are shown: the backend options and the adapters' documented
# non-secret settings (names only: the core imports no adapter). Every other value is masked.
SAFE_OPTIONS = frozenset({
    "prefix", "visibility_timeout", "max_attempts", "result_ttl", "state_ttl", "heartbeat_ttl", "max_payload_bytes",
    # Redis (redis-py settings and ours)
    "db", "socket_timeout", "socket_connect_timeout", "socket_keepalive", "socket_read_size", "retry_on_timeout",
    "max_connections", "timeout", "health_check_interval", "client_name", "protocol", "bus_subscribe",
    "cluster",
    "ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname",
    "ssl_min_version", "ssl_ciphers",
    # NATS
    "creds", "replicas", "connect_attempts", "reconnect_wait", "max_reconnect_attempts", "inbox_prefix",
    "tls_hostname",
    # both
    "tls_ca", "tls_cert", "tls_key",
})
# A URL inside free text: scheme://, then up to whitespace, a quote or a closing bracket.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()\[\]{}]+")


def is_secret_option(name: str) -> bool:
    """Whether the value of query option ``name`` is masked: every option not in ``SAFE_OPTIONS``."""
    return name.lower() not in SAFE_OPTIONS


def redact_url(url: str) -> str:
    """``url`` with its credentials masked, safe to print, log, raise or store.

    A URL without credentials comes back unchanged; something that cannot be parsed as
    a URL comes back as ``<unparseable URL>`` (it might be a secret itself), and one
    without a scheme has everything before an ``@`` masked (``user:pw@host:6379``).
    """
    if "://" not in url:
        return f"{MASK}@{url.rpartition('@')[2]}" if "@" in url else url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hosts}" if colon else f"{MASK}@{hosts}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(is_secret_option(key) for key, _ in pairs):
            query = "&".join(
                f"{quote(key, safe='')}={MASK if is_secret_option(key) else quote(value, safe='/:,')}"
                for key, value in pairs
            )
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def redact_text(text: str) -> str:
    """``text`` with every URL in it passed through ``redact_url``."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)
