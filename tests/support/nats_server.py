"""Launcher and session fixture for a real nats server (filled in by the nats backend work)."""
