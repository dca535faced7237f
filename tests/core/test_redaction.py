"""core.redaction: every URL form masks its credentials, and nothing else changes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distributed_agents.core.redaction import redact_text, redact_url


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
    ("redis://alice:pw@h/0?prefix=x", "redis://alice:***@h/0?prefix=x"),
    ("rediss://u:p%40ss@h:6380/0?tls_ca=/ca.pem", "rediss://u:***@h:6380/0?tls_ca=/ca.pem"),
    ("nats://tok@a:4222,b:4223", "nats://***@a:4222,b:4223"),
    ("tls://u:p@a?nkey=/seed.nk&token=t", "tls://u:***@a?nkey=***&token=***"),
    ("redis://h:6379/0?ssl_password=k&ssl_keyfile=/k.pem", "redis://h:6379/0?ssl_password=***&ssl_keyfile=/k.pem"),
    ("memory://", "memory://"),
    ("redis://h:6379/0?prefix=a", "redis://h:6379/0?prefix=a"),
    ("redis://h:6379/0?ssl_pasword=typo&db=1", "redis://h:6379/0?ssl_pasword=***&db=1"),  # unknown: masked
    ("redis://[::1:6379", "<unparseable URL>"),
    ("u:pw@h:6379", "***@h:6379"),  # no scheme
    ("localhost:6379", "localhost:6379"),
])
def test_credentials_are_masked_and_the_rest_kept(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact_url(shown) == shown  # idempotent


def test_urls_inside_text_are_masked() -> None:
    text = "cannot connect to redis://:s3cret@h:1/0; also 'nats://tok3n@x:4222' (and http://h/p)"
    assert redact_text(text) == "cannot connect to redis://:***@h:1/0; also 'nats://***@x:4222' (and http://h/p)"


secret = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=6, max_size=20)


@given(user=secret, password=secret, scheme=st.sampled_from(["redis", "rediss", "nats", "tls"]))
def test_no_password_or_token_survives(user: str, password: str, scheme: str) -> None:
    for url in (f"{scheme}://{user}:{password}@h:1/0", f"{scheme}://{password}@h:1", f"{scheme}://h:1?token={password}"):
        assert password not in redact_url(url).replace(user, "") or password in user
        assert password not in redact_text(f"at {url}, then").replace(user, "") or password in user


def test_errors_about_a_url_with_an_unknown_scheme_or_bad_options_mask_it() -> None:
    from distributed_agents import open_backend
    from distributed_agents.core.errors import DistributedAgentsError

    for url in ("foo://:s3cret-pw@h:1", "redis://:s3cret-pw@h:1/0?max_attempts=x", "u:s3cret-pw@h:6379",
                "redis://:s3cret-pw@h:1/0?prefix=a%20b", "nats://s3cret-pw@h:1?replicas=x"):
        with pytest.raises(DistributedAgentsError) as caught:
            open_backend(url)
        assert "s3cret-pw" not in str(caught.value), (url, str(caught.value))


def test_the_conformance_report_names_the_url_masked() -> None:
    import io

    from distributed_agents.conformance.report import ReportPlugin

    out = io.StringIO()
    ReportPlugin().render(out, "redis://:s3cret-pw@h:1/0", "quick")
    assert "redis://:***@h:1/0" in out.getvalue() and "s3cret-pw" not in out.getvalue()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_both_log_formats_mask_urls_whatever_logged_them(log_format: str) -> None:
    import logging

    from distributed_agents.log_format import log_handler

    handler = log_handler(log_format)
    record = logging.LogRecord("some.library", logging.WARNING, __file__, 1, "lost %s", ("redis://:s3cret-pw@h:1/0",),
                               None)
    assert handler.filter(record)  # adds the log context, as emitting does
    line = handler.format(record)
    assert "redis://:***@h:1/0" in line and "s3cret-pw" not in line



def test_redact_url_keeps_no_urls_after_it_returns() -> None:
    # A process-wide cache would keep every credential-bearing URL it was shown (error texts
    # included) for the life of the process; the backend keeps its own redacted URL instead.
    assert not hasattr(redact_url, "cache_info")


def test_a_backend_works_out_its_redacted_url_once_per_url() -> None:
    from distributed_agents.core.ports.backend import Backend

    backend = Backend.__new__(Backend)
    backend.url = "redis://user:secret@cache-host:6379/0?password=hunter2"
    first = backend.redacted_url
    assert first == "redis://user:***@cache-host:6379/0?password=***"
    assert backend.redacted_url is first  # kept, not parsed again
    backend.url = "nats://tok@other:4222"
    assert backend.redacted_url == "nats://***@other:4222"
