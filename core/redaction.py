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
* the value of every query option whose name says it holds a secret (``password``,
  ``token``, ``secret``, ``seed``, ``ssl_password``, ...). File paths such as
  ``?tls_key=/path/key.pem`` or ``?creds=/path/user.creds`` name where a secret is,
  not the secret, and stay visible.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

__all__ = ["MASK", "is_secret_option", "redact_text", "redact_url"]

MASK = "***"

# Query option names that hold a secret themselves; a name ending in one of
# _PATH_SUFFIXES holds where a secret is (a file), which is no secret.
_SECRET_WORDS = ("pass", "token", "secret", "seed", "nkey")
_PATH_SUFFIXES = ("file", "path", "dir")
# A URL inside free text: scheme://, then up to whitespace, a quote or a closing bracket.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()\[\]{}]+")


def is_secret_option(name: str) -> bool:
    """Whether the query option ``name`` holds a secret value (``password``, ``token``, ...)."""
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS) and not lowered.endswith(_PATH_SUFFIXES)


def redact_url(url: str) -> str:
    """``url`` with its credentials masked, safe to print, log, raise or store.

    A URL without credentials comes back unchanged; something that cannot be parsed as
    a URL comes back as ``<unparseable URL>`` (it might be a secret itself).
    """
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
