"""The Redis backend (needs the [redis] extra)."""
