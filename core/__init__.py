"""The standard-library-only core: graphs, state, the step engine and the four ports.

Nothing in this package imports outside the standard library (a test enforces it), and
nothing here imports an adapter: backends are reached through the ports only.
"""
