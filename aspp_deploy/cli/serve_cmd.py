"""``aspp-deploy triton``, ``triton-env``, ``serve`` and ``loadtest``: the model on a real Triton Inference Server."""

from __future__ import annotations

import os
import signal
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.table import Table

from aspp_deploy.cli._checks import check_output_file
from aspp_deploy.cli._click import Command
from aspp_deploy.cli._console import console, out_console, write_json
from aspp_deploy.cli._errors import fail, handle_errors
from aspp_deploy.cli._progress import progress
from aspp_deploy.errors import AsppDeployError, InputError


def _ints(text: str, what: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{what} {text!r}: give comma-separated integers, e.g. 1,2,4,8") from None
    return values


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


@handle_errors
def triton_command(
    out: Annotated[Path, typer.Argument(help="The model repository folder to write (replaced only if "
                                        "aspp-deploy wrote it).", show_default=False)],
    onnx: Annotated[Path, typer.Option("--onnx", "--model", help="The aspp-deploy ONNX to serve (any "
                                       "precision: model.onnx, model.int8-cpu.onnx, ...).")] = Path("artifacts/model.onnx"),
    name: Annotated[str, typer.Option(help="The service model's name (clients ask for it).")] = "aspp",
    executor: Annotated[str, typer.Option(help="Where the network runs: onnxruntime (in the Python model, "
                                          "any server) or triton (Triton's own onnxruntime/tensorrt_plan "
                                          "backend, called from the service).")] = "onnxruntime",
    target: Annotated[str, typer.Option(help="With --executor triton: onnx or trt (the network model).")] = "onnx",
    plan: Annotated[Optional[Path], typer.Option(help="A TensorRT engine built on the serving GPU by the "
                                                 "server's TensorRT (--target trt; else place it later).")] = None,
    max_batch: Annotated[int, typer.Option(help="Largest batch the service takes (per request and batched).")] = 8,
    dynamic_batching: Annotated[bool, typer.Option(" /--no-dynamic-batching", help="Turn Triton's dynamic "
                                                   "batcher off (it is on by default).")] = True,
    preferred_batch: Annotated[str, typer.Option(help="Preferred batch sizes of the dynamic batcher, e.g. "
                                                 "2,4 (default: none, Triton fills up to --max-batch).")] = "",
    queue_delay_us: Annotated[int, typer.Option(help="How long the batcher waits for more requests (us).")] = 2000,
    max_queue_size: Annotated[Optional[int], typer.Option(help="Requests the batcher's queue may hold; more "
                                                          "are rejected at once (default: 4 x max batch x "
                                                          "instances; 0: no limit).", show_default=False)] = None,
    queue_timeout_us: Annotated[int, typer.Option(help="Longest wait in the batcher's queue before the request "
                                                  "is rejected (us; 0: no limit; a client may ask for "
                                                  "less).")] = 10_000_000,
    instances: Annotated[int, typer.Option(help="Service instances (each one runs a batch at a time).")] = 1,
    kind: Annotated[str, typer.Option(help="Where instances run: cpu or gpu (the in-process executor runs "
                                      "on the CPU whatever this says).")] = "cpu",
    threads: Annotated[int, typer.Option(help="ONNX Runtime threads per instance, in-process executor "
                                         "(0: the server's cores divided among the instances).")] = 0,
    warmup: Annotated[bool, typer.Option(" /--no-warmup", help="Skip the warm-up request Triton sends "
                                         "before the model is ready.")] = True,
    version: Annotated[int, typer.Option(help="The model version folder to write; the other versions of a "
                                         "repository aspp-deploy wrote are kept.")] = 1,
    version_policy: Annotated[str, typer.Option(help="latest:N, all or specific:1,2.")] = "latest:1",
    max_image_pixels: Annotated[int, typer.Option(help="Largest image (width x height) a request may "
                                                  "carry.")] = 40_000_000,
    python_env: Annotated[Optional[str], typer.Option(help="The service's Python environment (a folder from "
                                                      "`aspp-deploy triton-env`, or a conda-pack archive): "
                                                      "Triton's EXECUTION_ENV_PATH. A relative path is written "
                                                      "relative to the model's folder "
                                                      "($$TRITON_MODEL_DIRECTORY/...), so the two move together. "
                                                      "Default: the server's own Python.",
                                                      show_default=False)] = None,
    unbatched_twin: Annotated[bool, typer.Option("--unbatched-twin", help="Also write NAME_nobatch, the same "
                                                 "service without dynamic batching, to measure the batcher.")] = False,
    raw_twin: Annotated[bool, typer.Option("--raw-twin", help="Also write NAME_raw, the same service with "
                                           "one required input, RAW at the network's input size: what "
                                           "perf_analyzer -m NAME_raw drives without an input file.")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write what was written as JSON.")] = None,
) -> None:
    """Write a Triton model repository that serves segmentation: encoded images (IMAGE, BYTES) or raw
    RGB arrays (RAW, uint8 H x W x 3) in, class-id masks at each image's size (MASK) out."""
    from aspp_deploy.serve.repository import TritonOptions, write_repository

    env = python_env  # a relative path is written relative to the model's folder (repository.env_path)
    opts = TritonOptions(name=name, executor=executor, target=target, max_batch=max_batch,
                         dynamic_batching=dynamic_batching,
                         preferred_batch=_ints(preferred_batch, "--preferred-batch"),
                         queue_delay_us=queue_delay_us, max_queue_size=max_queue_size,
                         queue_timeout_us=queue_timeout_us, instances=instances, kind=kind, threads=threads,
                         warmup=warmup, version=version, version_policy=version_policy,
                         max_image_pixels=max_image_pixels, python_env=env, unbatched_twin=unbatched_twin,
                         raw_twin=raw_twin)
    info = write_repository(onnx, out, opts, plan)
    versions = ", ".join(info.get("versions") or [str(version)])
    out_console.print(f"wrote the Triton model repository {out}: models {', '.join(info['models'])} "
                      f"(version {version}; versions in it: {versions})", highlight=False)
    for note in info.get("notes") or []:
        console.print(f"note: {note}", highlight=False)
    if info.get("plan_missing"):
        console.print(f"note: {info['plan_missing']}", highlight=False)
    if not env:
        console.print("note: the service runs in the server's own Python (it needs numpy<2, onnxruntime and "
                      "pillow there); give --python-env for an environment of its own", highlight=False)
    out_console.print(f"serve it: aspp-deploy serve {out}", highlight=False)
    write_json(json_out, info)

@handle_errors
def triton_env_command(
    folder: Annotated[Path, typer.Argument(help="Where to make the environment.", show_default=False)],
) -> None:
    """Make the Python environment the Triton service model runs in (NumPy 1.x, this ONNX Runtime and
    Pillow); give it to `aspp-deploy triton --python-env`."""
    from aspp_deploy.serve.environment import make_env

    requirements = make_env(folder, lambda m: console.print(m, highlight=False))
    out_console.print(f"made {folder} with {' '.join(requirements)}", highlight=False)

@handle_errors
def serve_command(
    repo: Annotated[Path, typer.Argument(help="A Triton model repository (from `aspp-deploy triton` or a "
                                         "bundle's triton/model_repository).", show_default=False)],
    server: Annotated[Optional[Path], typer.Option(help="The tritonserver binary (default: on PATH, "
                                                   "/opt/tritonserver, else the nvidia-pytriton wheel's).",
                                                   show_default=False)] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="HTTP/REST port.")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.")] = 8002,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every model to be ready.")] = 300.0,
    verbose: Annotated[bool, typer.Option("--verbose", help="Print the server's log as it comes.")] = False,
    allow_api: Annotated[str, typer.Option(help="Open restricted Triton APIs, comma-separated: shared-memory, "
                                           "model-repository, statistics, trace, logging (closed by "
                                           "default: only health, metadata, model config and inference "
                                           "answer).")] = "",
    health_interval: Annotated[float, typer.Option(help="Seconds between test inferences of every model "
                                                   "(0: only watch the server process).")] = 5.0,
    health_timeout: Annotated[float, typer.Option(help="Seconds a test inference may take before the model "
                                                  "counts as not answering.")] = 10.0,
    restarts: Annotated[int, typer.Option(help="Server restarts in a row to bring back a model that stopped "
                                          "answering before serve gives up (0: stop at once).")] = 2,
    grace: Annotated[float, typer.Option(help="Seconds in-flight requests get to finish on Ctrl-C before "
                                         "the server is killed.")] = 5.0,
    log: Annotated[Optional[Path], typer.Option("--log", help="Append the server's log to this file "
                                                "(default: a new file in the temporary folder).",
                                                show_default=False)] = None,
) -> None:
    """Run a real tritonserver on REPO until Ctrl-C: waits until every model is ready, prints the
    endpoints, then watches it: a server that exits is reported with its exit status and its own
    error lines; a model that stops answering a periodic test inference (a dead or frozen Python
    stub) gets the server restarted, or the server stopped with one error line. A model that fails
    to load is one error line with Triton's reason."""
    from aspp_deploy.serve.server import TritonServer, find_server, restricted_apis, watch

    allowed = [a.strip() for a in allow_api.split(",") if a.strip()]
    closed = restricted_apis(allowed)  # an unknown API name is refused before anything starts

    for port in (http_port, grpc_port, metrics_port):
        if not 0 < port < 65536:
            raise InputError(f"port {port}: give 1 to 65535")
    if health_interval > 0 and health_timeout <= 0:
        raise InputError("--health-timeout 0: a test inference needs more than 0 seconds")
    binary = find_server(server)
    made_log = log is None
    if log is not None:
        check_output_file(log, "--log")
    else:
        fd, name = tempfile.mkstemp(prefix=f"aspp-serve-{http_port}-", suffix=".log")
        os.close(fd)
        log = Path(name)
    say = lambda line: console.print(line, highlight=False, markup=False)  # noqa: E731
    proc = TritonServer(repo, binary, host, http_port, grpc_port, metrics_port, echo=say if verbose else None,
                        allow_api=allowed, log_file=log, grace=grace)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (`cmd &`)
    signal.signal(signal.SIGTERM, _interrupt)  # docker stop, systemd, kill: a clean stop too
    try:
        proc.start()  # checks the repository first
        console.print(f"started {binary.path} ({binary.origin}) on {repo}", highlight=False)
        models = proc.wait_ready(timeout)
        out_console.print(f"ready: {', '.join(models)}\n  HTTP    http://{proc.http_url}\n  gRPC    "
                          f"grpc://{proc.grpc_url}\n  metrics {proc.metrics_url}\n  log     {log}\n"
                          + (f"restricted: {', '.join(closed)} (open with --allow-api)\n" if closed else "")
                          + (f"watching: a test inference of every model each {health_interval:g} s, up to "
                             f"{restarts} restart(s) in a row\n" if health_interval > 0 else "")
                          + "Ctrl-C stops it.", highlight=False)
        watch(proc, models, health_interval, health_timeout, restarts, timeout, say)
    except KeyboardInterrupt:
        proc.stop()
        console.print(f"stopped: {proc.stop_note or 'tritonserver had already exited'}", highlight=False)
    except AsppDeployError as exc:
        if proc.process is None:
            raise  # refused before the server started: it has no log
        proc.kill()
        raise type(exc)(f"{exc} (server log: {log})") from None
    finally:
        proc.kill()  # a second Ctrl-C, or any other way out: no waiting
        proc.stop()
        proc.close_log()
        if made_log and proc.process is None:
            log.unlink(missing_ok=True)

@handle_errors
def loadtest_command(
    urls: Annotated[List[str], typer.Argument(help="Endpoints: http://HOST:PORT and/or grpc://HOST:PORT.",
                                              show_default=False)],
    images: Annotated[List[Path], typer.Option("--images", help="Image files or folders to send (repeat "
                                               "the option for several).", show_default=False)],
    model: Annotated[List[str], typer.Option("--model", help="Service model(s) to load (repeat: e.g. aspp "
                                             "and aspp_nobatch to see the dynamic batcher).")] = ["aspp"],
    concurrency: Annotated[str, typer.Option(help="Concurrent clients per level.")] = "1,2,4,8",
    requests: Annotated[int, typer.Option(help="Requests per level (an upper bound).")] = 200,
    duration: Annotated[float, typer.Option(help="Seconds per level at most.")] = 60.0,
    timeout: Annotated[float, typer.Option(help="Seconds one request may take.")] = 30.0,
    warmup: Annotated[int, typer.Option(help="Uncounted requests before each model's sweep.")] = 4,
    send: Annotated[str, typer.Option("--input", help="image (encoded file bytes, IMAGE) or raw (decoded "
                                      "uint8 RGB, RAW).")] = "image",
    verify: Annotated[Optional[Path], typer.Option(help="An aspp-deploy ONNX: each returned mask must equal "
                                                   "what this toolkit's runner predicts with it.",
                                                   show_default=False)] = None,
    report: Annotated[Optional[Path], typer.Option(help="Report folder (JSON, CSV, Markdown, plot).")] = Path("reports/loadtest"),
    max_consecutive_errors: Annotated[int, typer.Option(help="Failed requests in a row (all clients of a "
                                                        "level) that stop the level.")] = 20,
    recover: Annotated[float, typer.Option(help="Seconds to wait for a server that went away to be ready "
                                           "again before the next level (else the rest is not run).")] = 30.0,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write every figure as JSON.")] = None,
) -> None:
    """Load a served model with concurrent tritonclient clients over a sweep of concurrency levels:
    throughput, p50/p90/p99 latency, errors (exit code 1 when any request failed). It first checks
    that the server answers, the models are ready and one request succeeds; clients back off after
    failures, and a run of failures is reported as an outage (start, length, failed requests)."""
    from aspp_deploy.bench.report import machine_description
    from aspp_deploy.predict import find_images
    from aspp_deploy.serve.loadtest import Endpoint, load_samples, outages, rows, sweep, write_report

    endpoints = [Endpoint.parse(u) for u in urls]
    files, skipped = find_images(images)
    if not files:
        raise InputError(f"no images found in {', '.join(map(str, images))}")
    expected = None
    if verify is not None:
        from aspp_deploy.runtime.ort_segmenter import OrtSegmenter

        expected = []
        with OrtSegmenter(verify) as seg, progress() as bar:
            task = bar.add_task(f"reference masks from {verify.name}", total=len(files))
            for f in files:
                expected.append(seg.predict(f))
                bar.advance(task)
    samples = load_samples(files, send, expected)
    levels = _ints(concurrency, "--concurrency")
    results = sweep(endpoints, model, samples, levels, requests, duration, timeout, warmup,
                    log=lambda m: console.print(m, highlight=False), max_consecutive_errors=max_consecutive_errors,
                    recover_s=recover)
    table = Table(title="Triton load test")
    for col in ("model", "protocol", "clients", "requests", "req/s", "p50 ms", "p90 ms", "p99 ms", "errors",
                "wrong masks"):
        table.add_column(col, justify="left" if col in ("model", "protocol") else "right")
    f = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    for r in results:
        table.add_row(r.model, r.protocol, str(r.concurrency), str(r.requests), f"{r.throughput:.1f}",
                      f(r.p50_ms), f(r.p90_ms), f(r.p99_ms), str(r.errors), str(r.mismatches))
    out_console.print(table)
    settings = {"endpoints": [str(e) for e in endpoints], "models": model, "concurrency": levels,
                "requests": requests, "duration_s": duration, "timeout_s": timeout, "input": send,
                "images": len(files), "verified_against": str(verify) if verify else None,
                "skipped_images": [str(s) for s in skipped], "max_consecutive_errors": max_consecutive_errors,
                "recover_s": recover}
    machine = machine_description()
    if report is not None:
        written = write_report(report, results, settings, machine)
        console.print(f"report: {len(written)} files in {report}", highlight=False)
    down = outages(results)
    write_json(json_out, {"machine": machine, "settings": settings, "rows": rows(results),
                          "outages": [asdict(o) for o in down]})
    failed = sum(r.errors + r.mismatches for r in results)
    if failed:
        first = next(r.first_error for r in results if r.first_error or r.mismatches) or "masks differ"
        where = "; ".join(o.describe() for o in down[:3]) + (f" (and {len(down) - 3} more)" if len(down) > 3 else "")
        fail(f"{failed} of {sum(r.requests for r in results)} requests failed or returned a wrong mask "
             + (f"({where})" if down else f"(first: {first})"))


def register(app: typer.Typer) -> None:
    """Adds this module's commands to ``app``."""
    app.command("triton", cls=Command)(triton_command)
    app.command("triton-env", cls=Command)(triton_env_command)
    app.command("serve", cls=Command)(serve_command)
    app.command("loadtest", cls=Command)(loadtest_command)
