"""A test CA with server and client certificates, written as PEM files (made with trustme).

``make_certificates(directory)`` returns the paths of a CA, a server certificate for
``127.0.0.1`` and ``localhost`` signed by it, a client certificate signed by it, and a
second, unrelated CA (a certificate chain a client must not trust). Nothing is fetched:
trustme generates the keys locally, in milliseconds (ECDSA).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme

__all__ = ["Certificates", "make_certificates"]


@dataclass(frozen=True)
class Certificates:
    """Paths of PEM files; ``other_ca`` signed none of the others."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca: str


def make_certificates(directory: str | Path, *, server_names: tuple[str, ...] = ("127.0.0.1", "localhost")
                      ) -> Certificates:
    """Write a CA, a server and a client certificate (and an unrelated CA) into ``directory``.

    The server certificate is for ``server_names`` (give another name to test host-name checks).
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert(*server_names)
    client = ca.issue_cert("client@example.test", common_name="da-test-client")
    paths = Certificates(
        ca=str(root / "ca.pem"),
        server_cert=str(root / "server.pem"),
        server_key=str(root / "server.key"),
        client_cert=str(root / "client.pem"),
        client_key=str(root / "client.key"),
        other_ca=str(root / "other-ca.pem"),
    )
    ca.cert_pem.write_to_path(paths.ca)
    server.private_key_pem.write_to_path(paths.server_key)
    server.cert_chain_pems[0].write_to_path(paths.server_cert)
    for extra in server.cert_chain_pems[1:]:
        extra.write_to_path(paths.server_cert, append=True)
    client.private_key_pem.write_to_path(paths.client_key)
    client.cert_chain_pems[0].write_to_path(paths.client_cert)
    trustme.CA().cert_pem.write_to_path(paths.other_ca)
    return paths
