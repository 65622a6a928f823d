"""The one-line TensorRT pre-flight summary of a manifest entry that ``export``, ``import`` and
``quantize`` print."""

from __future__ import annotations

from pathlib import Path

from aspp_deploy.export.trt_check import SIDECAR_KEY, version_summaries


def preflight_line(entry: dict, onnx_path: Path, title: str = "TensorRT pre-flight: ") -> str:
    """One line from an entry's pre-flight summary (or, from an older entry, its findings): the verdict
    per version with its error and warning counts, and where every finding is."""
    def counts(c: dict) -> str:
        parts = [f"{c[k]} {k if c[k] != 1 else k[:-1]}" for k in ("errors", "warnings") if c.get(k)]
        return f" ({', '.join(parts)})" if parts else ""

    checks = version_summaries(entry)
    line = title + ", ".join(f"{v} {'ok' if c['ok'] else 'FAIL'}{counts(c)}" for v, c in checks.items())
    sidecar = (entry.get(SIDECAR_KEY) or {}).get("file")
    if any(c.get("errors") or c.get("warnings") for c in checks.values()):
        where = f"every finding in {onnx_path.parent / sidecar}; " if sidecar else ""
        line += f" ({where}`aspp-deploy check {onnx_path}` groups them)"
    return line
