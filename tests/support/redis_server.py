"""Launcher and session fixture for a real redis server (filled in by the redis backend work)."""
