"""Backends: each subpackage implements the four ports on one engine."""
