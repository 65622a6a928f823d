"""Latency measurement (``bench``) and the cross-backend table (``compare``)."""
