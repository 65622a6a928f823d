"""Hold a Triton segmentation service under load: concurrent ``tritonclient`` clients (HTTP or gRPC) over
a sweep of concurrency levels; throughput, p50/p90/p99 latency and errors per level.

Every level is bounded in requests and in time. Each client thread has its own connection; images are
encoded (or decoded, for ``RAW``) once, before the clock starts. With ``expected`` masks, every
answer is compared with them and a different mask counts as an error.
"""

from __future__ import annotations

import csv
import io
import itertools
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from aspp_deploy.errors import InputError, MissingDependencyError

PROTOCOLS = ("http", "grpc")
INPUTS = ("image", "raw")
CSV_COLUMNS = ["model", "protocol", "concurrency", "requests", "ok", "errors", "mismatches", "wall_s", "throughput",
               "p50_ms", "p90_ms", "p99_ms", "mean_ms", "first_error"]


@dataclass
class Endpoint:
    protocol: str
    address: str  # host:port

    @classmethod
    def parse(cls, url: str) -> "Endpoint":
        scheme, sep, rest = url.partition("://")
        if not sep:
            raise InputError(f"{url!r}: give the endpoint as http://HOST:PORT or grpc://HOST:PORT")
        if scheme not in PROTOCOLS:
            raise InputError(f"{url!r}: the protocol must be http or grpc, not {scheme!r}")
        host, colon, port = rest.rstrip("/").rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InputError(f"{url!r}: give HOST:PORT after {scheme}://")
        return cls(scheme, f"{host}:{int(port)}")

    def __str__(self) -> str:
        return f"{self.protocol}://{self.address}"


@dataclass
class Sample:
    name: str
    payload: Any          # encoded bytes (IMAGE) or an H x W x 3 uint8 array (RAW)
    expected: Optional[np.ndarray] = None


@dataclass
class LevelResult:
    model: str
    protocol: str
    concurrency: int
    requests: int
    ok: int
    errors: int
    mismatches: int
    wall_s: float
    throughput: float  # answered requests (images) per second, wrong masks included
    p50_ms: Optional[float]
    p90_ms: Optional[float]
    p99_ms: Optional[float]
    mean_ms: Optional[float]
    first_error: str = ""
    latencies_ms: List[float] = field(default_factory=list, repr=False)


def _tritonclient(protocol: str):
    try:
        if protocol == "grpc":
            import tritonclient.grpc as client
        else:
            import tritonclient.http as client
    except ImportError as exc:
        raise MissingDependencyError(f"tritonclient ({protocol}) is not installed ({exc}): "
                                     "pip install 'aspp-deploy[serve]'") from None
    return client


def _connect(endpoint: Endpoint, timeout_s: float) -> Tuple[Any, Callable[..., Any]]:
    """A client of ``endpoint`` and ``infer(model, inputs, outputs)`` on it, with the request timeout."""
    if endpoint.protocol == "grpc":
        import tritonclient.grpc as grpc

        g = grpc.InferenceServerClient(endpoint.address)
        return g, lambda model, inputs, outputs: g.infer(model, inputs, outputs=outputs, client_timeout=timeout_s)
    import tritonclient.http as http

    h = http.InferenceServerClient(endpoint.address, connection_timeout=timeout_s, network_timeout=timeout_s)
    return h, lambda model, inputs, outputs: h.infer(model, inputs, outputs=outputs)


def load_samples(images: List[Path], kind: str, expected: Optional[List[np.ndarray]] = None) -> List[Sample]:
    """The request payloads, made once: file bytes for ``image``, RGB arrays for ``raw``."""
    from aspp_deploy.data.voc import load_image

    if kind not in INPUTS:
        raise InputError(f"input {kind!r}: choose image (encoded bytes) or raw (uint8 H x W x 3)")
    samples = []
    for i, path in enumerate(images):
        payload: Any = path.read_bytes() if kind == "image" else np.asarray(load_image(path), dtype=np.uint8)
        samples.append(Sample(path.name, payload, expected[i] if expected is not None else None))
    if not samples:
        raise InputError("no images to send")
    return samples


def _request(client_mod, sample: Sample):
    if isinstance(sample.payload, bytes):
        inp = client_mod.InferInput("IMAGE", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[sample.payload]], dtype=np.object_))
    else:
        array = sample.payload[None]
        inp = client_mod.InferInput("RAW", list(array.shape), "UINT8")
        inp.set_data_from_numpy(array)
    return [inp], [client_mod.InferRequestedOutput("MASK")]


def _short(exc: BaseException) -> str:
    """The first line of a client error (tritonclient's exceptions keep theirs in ``message()``)."""
    message = getattr(exc, "message", None)
    text = str(message() if callable(message) else exc) or type(exc).__name__
    return text.strip().splitlines()[0][:300]


def run_level(endpoint: Endpoint, model: str, samples: List[Sample], concurrency: int, requests: int,
              duration_s: float, timeout_s: float = 30.0) -> LevelResult:
    """``requests`` requests (at most ``duration_s`` seconds) from ``concurrency`` client threads."""
    client_mod = _tritonclient(endpoint.protocol)
    counter = itertools.count()
    lock = threading.Lock()
    latencies: List[float] = []
    errors: List[str] = []
    mismatches = [0]
    start = time.perf_counter()
    deadline = start + duration_s

    def worker() -> None:
        try:
            client, infer = _connect(endpoint, timeout_s)
        except Exception as exc:  # noqa: BLE001 - a client that cannot even be made fails its share
            with lock:
                errors.append(_short(exc))
            return
        try:
            while True:
                with lock:
                    n = next(counter)
                if n >= requests or time.perf_counter() > deadline:
                    return
                sample = samples[n % len(samples)]
                inputs, outputs = _request(client_mod, sample)
                t0 = time.perf_counter()
                try:
                    mask = infer(model, inputs, outputs).as_numpy("MASK")
                except Exception as exc:  # noqa: BLE001 - a failed request is a figure of the test
                    with lock:
                        errors.append(_short(exc))
                    continue
                elapsed = (time.perf_counter() - t0) * 1e3
                wrong = sample.expected is not None and (mask is None or mask.shape[1:] != sample.expected.shape
                                                         or not np.array_equal(mask[0], sample.expected))
                with lock:
                    latencies.append(elapsed)
                    mismatches[0] += int(wrong)
        finally:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a broken connection may fail too
                pass

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration_s + timeout_s + 30)
    wall = time.perf_counter() - start
    lat = np.asarray(latencies, dtype=np.float64)

    def pct(q: float) -> Optional[float]:
        return float(np.percentile(lat, q)) if lat.size else None

    return LevelResult(model, endpoint.protocol, concurrency, len(latencies) + len(errors),
                       len(latencies) - mismatches[0], len(errors), mismatches[0], round(wall, 3),
                       round(len(latencies) / wall, 3) if wall > 0 else 0.0, pct(50), pct(90), pct(99),
                       float(lat.mean()) if lat.size else None, errors[0] if errors else "", latencies)


def sweep(endpoints: List[Endpoint], models: List[str], samples: List[Sample], levels: List[int], requests: int,
          duration_s: float, timeout_s: float = 30.0, warmup: int = 0, log=lambda m: None) -> List[LevelResult]:
    """Every endpoint x model x concurrency level, in that order (warm-up requests are not counted)."""
    if not levels or min(levels) < 1 or max(levels) > 1024:
        raise InputError(f"concurrency levels {levels}: give 1 to 1024")
    if requests < 1 or duration_s <= 0:
        raise InputError("requests per level and the duration must be positive")
    results = []
    for endpoint, model in itertools.product(endpoints, models):
        if warmup:
            run_level(endpoint, model, samples, 1, warmup, duration_s, timeout_s)
        for level in levels:
            r = run_level(endpoint, model, samples, level, requests, duration_s, timeout_s)
            log(f"{endpoint} {model} concurrency {level}: {r.throughput:.1f} req/s, p50 {_ms(r.p50_ms)}, "
                f"p99 {_ms(r.p99_ms)}, {r.errors} error(s), {r.mismatches} wrong mask(s)")
            results.append(r)
    return results


def _ms(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.1f} ms"


def rows(results: List[LevelResult]) -> List[Dict[str, Any]]:
    return [{k: v for k, v in asdict(r).items() if k != "latencies_ms"} for r in results]


def markdown(results: List[LevelResult], settings: Dict[str, Any], machine: Dict[str, Any]) -> str:
    lines = ["# aspp-deploy loadtest", "",
             f"Machine: {machine.get('cpu')} ({machine.get('cores')} cores); {settings['images']} image(s) sent as "
             f"{settings['input']}; up to {settings['requests']} requests or {settings['duration_s']} s per level.", "",
             "| model | protocol | concurrency | requests | req/s | p50 ms | p90 ms | p99 ms | errors | wrong masks |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    f = lambda v: "" if v is None else f"{v:.1f}"  # noqa: E731
    for r in results:
        lines.append(f"| {r.model} | {r.protocol} | {r.concurrency} | {r.requests} | {r.throughput:.1f} | "
                     f"{f(r.p50_ms)} | {f(r.p90_ms)} | {f(r.p99_ms)} | {r.errors} | {r.mismatches} |")
    failed = [r for r in results if r.first_error]
    if failed:
        lines += ["", "First error per level:", ""]
        lines += [f"- {r.model} {r.protocol} x{r.concurrency}: {r.first_error}" for r in failed]
    return "\n".join(lines) + "\n"


def plot(results: List[LevelResult], path: Path) -> None:
    """Throughput (x) against p50 and p99 latency (y), one line per model and protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aspp_deploy.bench.report import _save_figure

    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups: Dict[Tuple[str, str], List[LevelResult]] = {}
    for r in results:
        if r.p50_ms is not None:
            groups.setdefault((r.model, r.protocol), []).append(r)
    for (model, protocol), rs in groups.items():
        x = [r.throughput for r in rs]
        line, = ax.plot(x, [float(r.p50_ms or 0) for r in rs], marker="o", label=f"{model} {protocol} p50")
        ax.plot(x, [float(r.p99_ms or 0) for r in rs], marker="^", linestyle="--", color=line.get_color(),
                label=f"{model} {protocol} p99")
        for r in rs:
            ax.annotate(f"c{r.concurrency}", (r.throughput, r.p50_ms), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xlabel("throughput (requests/s, one image per request)")
    ax.set_ylabel("latency per request (ms)")
    ax.set_title("Triton service: throughput vs latency (c = concurrent clients)")
    ax.grid(alpha=0.3)
    if groups:
        ax.legend(fontsize=7)
    _save_figure(fig, path)
    plt.close(fig)


def write_report(folder: Path, results: List[LevelResult], settings: Dict[str, Any],
                 machine: Dict[str, Any]) -> List[Path]:
    """results.json, results.csv, summary.md and throughput_latency.png in ``folder``."""
    from aspp_deploy.io import atomic_write_text, json_text

    folder.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine, "settings": settings, "rows": rows(results)}
    atomic_write_text(folder / "results.json", json_text(payload))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows(results))
    atomic_write_text(folder / "results.csv", buf.getvalue())
    atomic_write_text(folder / "summary.md", markdown(results, settings, machine))
    written = [folder / "results.json", folder / "results.csv", folder / "summary.md"]
    if any(r.p50_ms is not None for r in results):
        plot(results, folder / "throughput_latency.png")
        written.append(folder / "throughput_latency.png")
    return written
