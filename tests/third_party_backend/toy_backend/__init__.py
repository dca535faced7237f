"""A toy backend for ``toy://`` URLs: the in-process ports behind a third-party scheme."""
