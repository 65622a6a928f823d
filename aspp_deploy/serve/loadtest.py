"""Hold a Triton segmentation service under load: concurrent ``tritonclient`` clients (HTTP or gRPC) over
a sweep of concurrency levels; throughput, p50/p90/p99 latency and errors per level.

Every level is bounded in requests and in time. Each client thread has its own connection; images are
encoded (or decoded, for ``RAW``) once, before the clock starts. With ``expected`` masks, every
answer is compared with them and a different mask counts as an error.

An outage is not a flood: before any level, ``preflight`` checks that a server answers, that every
model is ready and that one real request succeeds (else one error, nothing sent). A client backs off
exponentially after a failed request, a level stops after ``max_consecutive_errors`` failures in a row
(across its clients), and before the next level the sweep waits (polling health, with backoff) at most
``recover_s`` for the server to come back. A run of failures is reported as an ``Outage``: when it
began (seconds from the start of the sweep), how long it lasted, how many requests failed.
"""

from __future__ import annotations

import csv
import io
import itertools
import random
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from aspp_deploy.data.voc import load_image
from aspp_deploy.errors import InputError, require
from aspp_deploy.io import atomic_write_text, json_text

PROTOCOLS = ("http", "grpc")
INPUTS = ("image", "raw")
CSV_COLUMNS = ["model", "protocol", "concurrency", "requests", "ok", "errors", "mismatches", "wall_s", "throughput",
               "p50_ms", "p90_ms", "p99_ms", "mean_ms", "outages", "stopped", "first_error"]
MAX_CONSECUTIVE_ERRORS = 20  # failed requests in a row (all clients of a level) that stop the level
RECOVER_S = 30.0             # how long the sweep waits for a server that went away before the next level
NO_SUCH_MODEL = "aspp-deploy-no-such-model"  # asked for by the health check: Triton says it is not ready
OUTAGE_MIN_ERRORS = 3        # failures in a row, with no success between them, that make an outage
BACKOFF_S = (0.05, 2.0)      # a client's first and longest pause after a failed request (doubling)


class ServerUnavailable(InputError):
    """No server, a model that is not ready, or a first request that fails: nothing else is sent."""


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

    @property
    def host_port(self) -> Tuple[str, int]:
        host, _, port = self.address.rpartition(":")
        return host.strip("[]"), int(port)

    def __str__(self) -> str:
        return f"{self.protocol}://{self.address}"


@dataclass
class Sample:
    name: str
    payload: Any          # encoded bytes (IMAGE) or an H x W x 3 uint8 array (RAW)
    expected: Optional[np.ndarray] = None


@dataclass
class Outage:
    """Requests failing in a row: from the moment the first of them failed (not when it was sent: a
    request sent before the fault fails with it) to the next success of a request sent after that moment
    (or the server's return); an answer to a request already in flight then ends nothing."""

    endpoint: str
    model: str
    concurrency: int
    start_s: float            # seconds from the start of the sweep
    length_s: float           # until a request succeeded again, or the server was ready again
    errors: int               # failed requests in it
    recovered: bool           # False: still failing when the load test stopped (length is a lower bound)
    first_error: str = ""

    def describe(self) -> str:
        length = f"{self.length_s:.1f} s" if self.recovered else f"at least {self.length_s:.1f} s (not over)"
        return (f"outage at {self.start_s:.1f} s for {length}: {self.errors} failed request(s) "
                f"({self.endpoint} {self.model} x{self.concurrency}; first: {self.first_error})")


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
    stopped: str = ""   # why the level ended before its requests and duration ran out
    outages: int = 0
    latencies_ms: List[float] = field(default_factory=list, repr=False)
    outage_list: List[Outage] = field(default_factory=list, repr=False)


def _tritonclient(protocol: str):
    return require(f"tritonclient.{'grpc' if protocol == 'grpc' else 'http'}", "pip install 'aspp-deploy[serve]'")


def _connect(endpoint: Endpoint, timeout_s: float) -> Tuple[Any, Callable[..., Any]]:
    """A client of ``endpoint`` and ``infer(model, inputs, outputs)`` on it, with the request timeout."""
    if endpoint.protocol == "grpc":
        import tritonclient.grpc as grpc

        g = grpc.InferenceServerClient(endpoint.address)
        return g, lambda model, inputs, outputs: g.infer(model, inputs, outputs=outputs, client_timeout=timeout_s)
    import tritonclient.http as http

    h = http.InferenceServerClient(endpoint.address, connection_timeout=timeout_s, network_timeout=timeout_s)
    return h, lambda model, inputs, outputs: h.infer(model, inputs, outputs=outputs)


def _close(client: Any) -> None:
    try:
        client.close()
    except Exception:  # noqa: BLE001 - closing a broken connection may fail too
        pass


def load_samples(images: List[Path], kind: str, expected: Optional[List[np.ndarray]] = None) -> List[Sample]:
    """The request payloads, made once: file bytes for ``image``, RGB arrays for ``raw``."""

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


def _reachable(endpoint: Endpoint, timeout_s: float) -> Optional[str]:
    """None when something accepts a TCP connection at the endpoint, else why not (in a few words)."""
    host, port = endpoint.host_port
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except ConnectionRefusedError:
        return "connection refused"
    except socket.gaierror as exc:
        return f"cannot resolve {host}: {exc.strerror or exc}"
    except (socket.timeout, TimeoutError):
        return f"no answer in {timeout_s:g} s"
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def _health(endpoint: Endpoint, models: List[str], timeout_s: float) -> Tuple[bool, str]:
    """``(answers, why)``: whether a Triton server answers at all, and why it is not ready ("" when the
    server is live and every model is ready). Health requests only, no inference."""
    _tritonclient(endpoint.protocol)
    why = _reachable(endpoint, min(timeout_s, 5.0))
    if why:
        return False, why
    try:
        client, _ = _connect(endpoint, min(timeout_s, 10.0))
    except Exception as exc:  # noqa: BLE001
        return False, _short(exc)
    try:
        try:
            live = client.is_server_live()
        except Exception as exc:  # noqa: BLE001 - something answers, but not Triton's health API
            return False, f"not Triton's health API: {_short(exc)}"
        if not live:
            return True, "the server is not live"
        try:  # an HTTP server that answers 200 to everything (Triton's metrics port) is not Triton's health API
            anything_ready = client.is_model_ready(NO_SUCH_MODEL)
        except Exception:  # noqa: BLE001 - Triton's gRPC answers an unknown model with an error
            anything_ready = False
        if anything_ready:
            return False, f"not Triton's health API: it calls a model that cannot exist ({NO_SUCH_MODEL}) ready (the metrics port?)"
        for model in models:
            try:
                ready = client.is_model_ready(model)
            except Exception as exc:  # noqa: BLE001
                return True, f"model {model!r}: {_short(exc)}"
            if not ready:
                return True, f"model {model!r} is not ready (is it in the repository, under that name?)"
        return True, ""
    finally:
        _close(client)


def preflight(endpoints: List[Endpoint], models: List[str], sample: Sample, timeout_s: float = 30.0) -> None:
    """Before any load: a server answers at each endpoint, every model is ready, one real request to each
    succeeds. Raises ``ServerUnavailable`` with one line otherwise (and has sent at most those requests)."""
    for endpoint in endpoints:
        answers, why = _health(endpoint, models, timeout_s)
        if not answers:
            raise ServerUnavailable(f"no Triton server answers at {endpoint} ({why})")
        if why:
            raise ServerUnavailable(f"{endpoint}: {why}")
        client_mod = _tritonclient(endpoint.protocol)
        client, infer = _connect(endpoint, timeout_s)
        try:
            for model in models:
                inputs, outputs = _request(client_mod, sample)
                try:
                    infer(model, inputs, outputs).as_numpy("MASK")
                except Exception as exc:  # noqa: BLE001
                    raise ServerUnavailable(f"the first request to model {model!r} at {endpoint} failed "
                                            f"({sample.name}): {_short(exc)}") from None
        finally:
            _close(client)


def wait_until_ready(endpoint: Endpoint, models: List[str], within_s: float, timeout_s: float = 5.0) -> Optional[float]:
    """Poll health (with backoff) until the server and ``models`` are ready: the seconds it took, or None
    when they were not ready within ``within_s``."""
    start = time.perf_counter()
    pause = BACKOFF_S[0]
    while True:
        if _health(endpoint, models, timeout_s) == (True, ""):
            return time.perf_counter() - start
        left = within_s - (time.perf_counter() - start)
        if left <= 0:
            return None
        time.sleep(min(pause, left))
        pause = min(pause * 2, BACKOFF_S[1])


class OutageTracker:
    """Level-wide bookkeeping of failures in a row: outages, and when to stop the level."""

    def __init__(self, clock0: float, max_consecutive: int, describe: Tuple[str, str, int]) -> None:
        self.clock0, self.max_consecutive, self.describe = clock0, max_consecutive, describe
        self.min_run = min(OUTAGE_MIN_ERRORS, max_consecutive)
        self.run = 0           # failures since the last success
        self.run_start = 0.0
        self.run_error = ""
        self.outages: List[Outage] = []
        self.stop = threading.Event()

    def failure(self, t_failed: float, message: str) -> None:
        if self.run == 0:
            self.run_start, self.run_error = t_failed, message
        self.run += 1
        if self.run >= self.max_consecutive:
            self.stop.set()

    def success(self, t_sent: float, t_done: float) -> None:
        """A request sent at ``t_sent`` answered at ``t_done``. Only a request sent after the run of failures
        began ends it: one sent before (in flight when the first of them failed) proves nothing of now."""
        if self.run and t_sent < self.run_start:
            return
        if self.run >= self.min_run:
            self.outages.append(Outage(*self.describe, round(self.run_start - self.clock0, 3),
                                       round(t_done - self.run_start, 3), self.run, True, self.run_error))
        self.run = 0

    def open_outage(self, t_now: float) -> Optional[Outage]:
        """The failures still in a row at the level's end, as an outage not (yet) over."""
        if self.run < self.min_run:
            return None
        outage = Outage(*self.describe, round(self.run_start - self.clock0, 3), round(t_now - self.run_start, 3),
                        self.run, False, self.run_error)
        self.outages.append(outage)
        return outage


def run_level(endpoint: Endpoint, model: str, samples: List[Sample], concurrency: int, requests: int,
              duration_s: float, timeout_s: float = 30.0, max_consecutive_errors: int = MAX_CONSECUTIVE_ERRORS,
              clock0: Optional[float] = None) -> LevelResult:
    """``requests`` requests (at most ``duration_s`` seconds) from ``concurrency`` client threads; it stops
    early after ``max_consecutive_errors`` failed requests in a row. ``clock0`` (``time.perf_counter``)
    is where outage start times count from (default: the level's start)."""
    client_mod = _tritonclient(endpoint.protocol)
    counter = itertools.count()
    lock = threading.Lock()
    latencies: List[float] = []
    errors: List[str] = []
    mismatches = [0]
    start = time.perf_counter()
    deadline = start + duration_s
    track = OutageTracker(start if clock0 is None else clock0, max_consecutive_errors,
                     (str(endpoint), model, concurrency))

    def failed(t_failed: float, message: str) -> None:
        with lock:
            errors.append(message)
            track.failure(t_failed, message)

    def worker() -> None:
        try:
            client, infer = _connect(endpoint, timeout_s)
        except Exception as exc:  # noqa: BLE001 - a client that cannot even be made fails its share
            failed(time.perf_counter(), _short(exc))
            return
        in_a_row = 0
        try:
            while not track.stop.is_set():
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
                    failed(time.perf_counter(), _short(exc))  # when it failed: it may have been sent before the fault
                    in_a_row += 1
                    pause = min(BACKOFF_S[1], BACKOFF_S[0] * 2 ** (in_a_row - 1))
                    track.stop.wait(min(random.uniform(pause / 2, pause), max(0.0, deadline - time.perf_counter())))
                    continue
                in_a_row = 0
                t1 = time.perf_counter()
                wrong = sample.expected is not None and (mask is None or mask.shape[1:] != sample.expected.shape
                                                         or not np.array_equal(mask[0], sample.expected))
                with lock:
                    latencies.append((t1 - t0) * 1e3)
                    mismatches[0] += int(wrong)
                    track.success(t0, t1)
        finally:
            _close(client)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration_s + timeout_s + 30)
    end = time.perf_counter()
    wall = end - start
    with lock:
        stopped = (f"stopped after {track.run} failed requests in a row (--max-consecutive-errors "
                   f"{max_consecutive_errors})") if track.stop.is_set() else ""
        track.open_outage(end)
        lat = np.asarray(latencies, dtype=np.float64)
        done, failures, wrong_masks = len(latencies), list(errors), mismatches[0]

    def pct(q: float) -> Optional[float]:
        return float(np.percentile(lat, q)) if lat.size else None

    return LevelResult(model, endpoint.protocol, concurrency, done + len(failures), done - wrong_masks,
                       len(failures), wrong_masks, round(wall, 3), round(done / wall, 3) if wall > 0 else 0.0,
                       pct(50), pct(90), pct(99), float(lat.mean()) if lat.size else None,
                       failures[0] if failures else "", stopped, len(track.outages), list(latencies),
                       list(track.outages))


def sweep(endpoints: List[Endpoint], models: List[str], samples: List[Sample], levels: List[int], requests: int,
          duration_s: float, timeout_s: float = 30.0, warmup: int = 0, log=lambda m: None,
          max_consecutive_errors: int = MAX_CONSECUTIVE_ERRORS, recover_s: float = RECOVER_S,
          check_first: bool = True) -> List[LevelResult]:
    """Every endpoint x model x concurrency level, in that order (warm-up requests are not counted).

    ``preflight`` runs first (``check_first``). A level that ends inside an outage is followed by a wait
    of at most ``recover_s`` for the server to be ready again; when it does not come back, the levels
    left are not run (the outage is reported as not over)."""
    if not levels or min(levels) < 1 or max(levels) > 1024:
        raise InputError(f"concurrency levels {levels}: give 1 to 1024")
    if requests < 1 or duration_s <= 0:
        raise InputError("requests per level and the duration must be positive")
    if max_consecutive_errors < 1:
        raise InputError(f"max consecutive errors {max_consecutive_errors}: give 1 or more")
    if recover_s < 0:
        raise InputError(f"recover {recover_s} s: give 0 or more")
    if check_first:
        preflight(endpoints, models, samples[0], timeout_s)
    clock0 = time.perf_counter()
    results: List[LevelResult] = []
    plan = [(e, m, level) for e, m in itertools.product(endpoints, models) for level in levels]
    warmed = set()
    for k, (endpoint, model, level) in enumerate(plan):
        if warmup and (endpoint.address, model) not in warmed:
            warmed.add((endpoint.address, model))
            run_level(endpoint, model, samples, 1, warmup, duration_s, timeout_s, max_consecutive_errors)
        r = run_level(endpoint, model, samples, level, requests, duration_s, timeout_s, max_consecutive_errors,
                      clock0)
        log(f"{endpoint} {model} concurrency {level}: {r.throughput:.1f} req/s, p50 {_ms(r.p50_ms)}, "
            f"p99 {_ms(r.p99_ms)}, {r.errors} error(s), {r.mismatches} wrong mask(s)"
            + (f"; {r.stopped}" if r.stopped else ""))
        results.append(r)
        still_down = [o for o in r.outage_list if not o.recovered]
        if still_down and k + 1 < len(plan):
            log(f"{endpoint}: waiting up to {recover_s:g} s for the server to be ready again")
            took = wait_until_ready(endpoint, models, recover_s)
            outage = still_down[-1]
            if took is not None:
                outage.length_s = round(outage.length_s + took, 3)
                outage.recovered = True
            else:
                outage.length_s = round(outage.length_s + recover_s, 3)
        for outage in r.outage_list:
            log(outage.describe())
        if still_down and not still_down[-1].recovered and k + 1 < len(plan):
            log(f"{endpoint} did not come back within {recover_s:g} s: the {len(plan) - k - 1} level(s) left "
                "are not run")
            break
    return results


def outages(results: List[LevelResult]) -> List[Outage]:
    return [o for r in results for o in r.outage_list]


def _ms(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.1f} ms"


def rows(results: List[LevelResult]) -> List[Dict[str, Any]]:
    return [{k: v for k, v in asdict(r).items() if k not in ("latencies_ms", "outage_list")} for r in results]


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
        lines += [f"- {r.model} {r.protocol} x{r.concurrency}: {r.first_error}" + (f" ({r.stopped})" if r.stopped else "")
                  for r in failed]
    down = outages(results)
    if down:
        lines += ["", "Outages (failed requests in a row; start in seconds from the start of the load test):", "",
                  "| endpoint | model | concurrency | start s | length s | failed requests | over | first error |",
                  "|---|---|---:|---:|---:|---:|---|---|"]
        lines += [f"| {o.endpoint} | {o.model} | {o.concurrency} | {o.start_s:.1f} | {o.length_s:.1f} | {o.errors} | "
                  f"{'yes' if o.recovered else 'no (at least)'} | {o.first_error} |" for o in down]
    return "\n".join(lines) + "\n"


def plot(results: List[LevelResult], path: Path) -> None:
    """Throughput (x) against p50 and p99 latency (y), one line per model and protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aspp_deploy.bench.report import save_figure

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
    save_figure(fig, path)
    plt.close(fig)


def write_report(folder: Path, results: List[LevelResult], settings: Dict[str, Any],
                 machine: Dict[str, Any]) -> List[Path]:
    """results.json, results.csv, summary.md and throughput_latency.png in ``folder``."""

    folder.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine, "settings": settings, "rows": rows(results),
               "outages": [asdict(o) for o in outages(results)]}
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
