"""Shared test helpers: real server launchers and fixtures."""
