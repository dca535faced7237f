"""The NATS backend (needs the [nats] extra)."""
