"""Backends: each turns an artifact into a ``Runner`` (see ``base.Runner``)."""
