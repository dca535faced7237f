"""Decentralized NATS auth for tests: an operator, accounts and users as signed JWTs, and .creds files.

``Decentralized()`` makes an operator, a system account and application accounts (``app``
by default; ``Decentralized(("a", "b"))`` for two tenants) with JetStream enabled (NKeys from the ``nkeys`` package, JWTs signed with them: the format
``nsc`` writes). ``server_config`` is the nats-server configuration that trusts them
(memory resolver, accounts preloaded); ``write_creds(path)`` writes a user's credentials
file, signed by an application account (``account="app"``), or by an account the server
does not know with ``trusted=False``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import nkeys

__all__ = ["Decentralized"]

_UNLIMITED = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True,
              "conn": -1, "leaf": -1, "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class _Key:
    def __init__(self, prefix: int) -> None:
        self.seed = nkeys.encode_seed(os.urandom(32), prefix)
        self.pair = nkeys.from_seed(self.seed)
        self.public = self.pair.public_key.decode()

    def sign_jwt(self, subject: str, name: str, claims: dict[str, Any]) -> str:
        """A JWT for ``subject`` issued (signed) by this key."""
        body: dict[str, Any] = {"iat": int(time.time()), "iss": self.public, "name": name, "sub": subject,
                                "nats": {**claims, "version": 2}}
        body["jti"] = base64.b32encode(hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()).decode()
        head = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
        payload = _b64(json.dumps(body).encode())
        return f"{head}.{payload}.{_b64(self.pair.sign(f'{head}.{payload}'.encode()))}"


class Decentralized:
    """An operator with a system account and application accounts (JetStream on)."""

    def __init__(self, accounts: tuple[str, ...] = ("app",)) -> None:
        self.operator = _Key(nkeys.PREFIX_BYTE_OPERATOR)
        self.system = _Key(nkeys.PREFIX_BYTE_ACCOUNT)
        self.accounts = {name: _Key(nkeys.PREFIX_BYTE_ACCOUNT) for name in accounts}

    @property
    def server_config(self) -> str:
        operator_jwt = self.operator.sign_jwt(self.operator.public, "operator", {"type": "operator"})
        system_jwt = self.operator.sign_jwt(self.system.public, "SYS", {"type": "account"})
        preload = [f"  {self.system.public}: {system_jwt}"]
        for name, account in self.accounts.items():
            account_jwt = self.operator.sign_jwt(account.public, name, {"type": "account", "limits": _UNLIMITED})
            preload.append(f"  {account.public}: {account_jwt}")
        return (f"operator: {operator_jwt}\nsystem_account: {self.system.public}\nresolver: MEMORY\n"
                "resolver_preload: {\n" + "\n".join(preload) + "\n}\n")

    def write_creds(self, path: str | Path, *, account: str = "app", trusted: bool = True) -> str:
        """Write a user's .creds file (JWT and seed) of ``account`` to ``path``; returns the path."""
        user = _Key(nkeys.PREFIX_BYTE_USER)
        issuer = self.accounts[account] if trusted else _Key(nkeys.PREFIX_BYTE_ACCOUNT)
        user_jwt = issuer.sign_jwt(user.public, "user", {"type": "user", "pub": {}, "sub": {}, "subs": -1,
                                                         "data": -1, "payload": -1})
        Path(path).write_text(f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n"
                              f"-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n------END USER NKEY SEED------\n")
        return str(path)
