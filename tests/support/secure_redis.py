"""A ``redis-server`` with ACL users and, optionally, TLS only (certificates from ``support.tls``).

``SecureRedisServer(acl=[...], certs=..., client_certs="yes")`` writes the ACL lines to an
``aclfile`` in its directory (the ``default`` user gets ``admin_password`` and every
permission, so the tests can set up and inspect), and with ``certs`` listens with TLS
only (``--port 0 --tls-port``), asking clients for a certificate signed by the CA when
``client_certs`` is ``"yes"`` (``"optional"``, ``"no"`` as redis-server's
``tls-auth-clients``).
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from support.redis_server import RedisServer
from support.tls import Certificates

__all__ = ["SecureRedisServer"]


class SecureRedisServer(RedisServer):
    """``redis-server`` with an ACL file and optionally TLS only; ``admin_url`` is the default user's."""

    def __init__(
        self,
        *,
        acl: list[str] | None = None,
        admin_password: str = "admin-pw",
        certs: Certificates | None = None,
        client_certs: str = "no",
    ) -> None:
        super().__init__(password=admin_password)
        self.acl = list(acl or [])
        self.certs = certs
        self.client_certs = client_certs
        self.acl_path = str(Path(self.directory) / "users.acl")

    @property
    def scheme(self) -> str:
        return "rediss" if self.certs else "redis"

    def url_for(self, user: str, password: str, db: int = 0) -> str:
        """``redis[s]://user:password@127.0.0.1:<port>/<db>`` (no TLS options)."""
        return f"{self.scheme}://{user}:{password}@127.0.0.1:{self.port}/{db}"

    @property
    def admin_url(self) -> str:
        return self.url_for("default", self.password or "")

    def command(self) -> list[str]:
        lines = [f"user default on >{self.password} ~* &* +@all", *self.acl]
        Path(self.acl_path).write_text("\n".join(lines) + "\n")
        args = [arg for arg in super().command()]
        at = args.index("--requirepass")
        del args[at:at + 2]  # the aclfile sets the default user's password
        args += ["--aclfile", self.acl_path]
        if self.certs:
            at = args.index("--port")
            args[at + 1] = "0"
            args += ["--tls-port", str(self.port), "--tls-cert-file", self.certs.server_cert,
                     "--tls-key-file", self.certs.server_key, "--tls-ca-cert-file", self.certs.ca,
                     "--tls-auth-clients", self.client_certs]
        return args

    def ping(self) -> bool:
        if not self.certs:
            return super().ping()
        context = ssl.create_default_context(cafile=self.certs.ca)
        context.check_hostname = False  # readiness only; the tests check host names through the adapter
        context.load_cert_chain(self.certs.client_cert, self.certs.client_key)
        secret = (self.password or "").encode()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw, \
                    context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                sock.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n*1\r\n$4\r\nPING\r\n" % (len(secret), secret))
                reply = b""
                while b"PONG" not in reply and len(reply) < 256:
                    chunk = sock.recv(256)
                    if not chunk or reply.startswith(b"-"):
                        return False
                    reply += chunk
                return b"+PONG" in reply
        except (OSError, ssl.SSLError):
            return False
