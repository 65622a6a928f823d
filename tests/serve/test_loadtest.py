"""`aspp-deploy loadtest` when the server is not there, not Triton, or goes away: one line before any
load, a bounded number of requests, and an outage reported as an outage (real tritonserver)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.serve.conftest import READY_TIMEOUT_S, run_cli, start_server

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
CLI = [str(Path(sys.executable).parent / "aspp-deploy")]


def _errors(output: str):
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_a_wrong_port_is_one_line_and_no_load(served_model, tmp_path, triton_binary):
    from aspp_deploy.serve.server import free_port

    port = free_port()  # nothing listens there
    result = run_cli("loadtest", f"http://127.0.0.1:{port}", "--images", served_model.images,
                     "--report", tmp_path / "r")
    assert result.exit_code == 1
    assert _errors(result.output) == [f"error: no Triton server answers at http://127.0.0.1:{port} "
                                      "(connection refused)"], result.output
    assert "Traceback" not in result.output and not (tmp_path / "r").exists()


class _CountingListener:
    """A TCP port that accepts connections, counts them and closes them: something, but not Triton."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_port_that_is_not_triton_gets_a_handful_of_connections_not_a_flood(served_model, tmp_path, protocol,
                                                                              triton_binary):
    listener = _CountingListener()
    try:
        url = f"{protocol}://127.0.0.1:{listener.port}"
        result = run_cli("loadtest", url, "--images", served_model.images, "--concurrency", "8",
                         "--requests", "1000", "--report", tmp_path / "r")
    finally:
        listener.close()
    assert result.exit_code == 1
    errors = _errors(result.output)
    assert len(errors) == 1 and errors[0].startswith(f"error: no Triton server answers at {url} ("), result.output
    assert 1 <= listener.accepted <= 5, listener.accepted  # the checks' connections, none of the 1000 requests


@pytest.fixture(scope="module")
def own(repo, triton_binary):
    """A server this module may kill and start again (on the same ports)."""
    holder = SimpleNamespace(server=start_server(repo, triton_binary))
    yield holder
    holder.server.stop()


def test_a_model_that_is_not_ready_is_one_line(own, served_model, tmp_path):
    result = run_cli("loadtest", f"grpc://{own.server.grpc_url}", "--images", served_model.images,
                     "--model", "aspp", "--model", "nosuch", "--report", tmp_path / "r")
    assert result.exit_code == 1
    assert _errors(result.output) == [f"error: grpc://{own.server.grpc_url}: model 'nosuch' is not ready (is it in "
                                      "the repository, under that name?)"], result.output


def test_the_metrics_port_is_not_taken_for_the_server(own, served_model, tmp_path):
    """Triton's metrics port answers 200 to every path, readiness included: the check asks for a model
    that cannot exist, so the wrong port is one line before any load, not a refused first request."""
    url = f"http://127.0.0.1:{own.server.metrics_port}"
    result = run_cli("loadtest", url, "--images", served_model.images, "--report", tmp_path / "r")
    assert result.exit_code == 1
    errors = _errors(result.output)
    assert len(errors) == 1 and errors[0].startswith(f"error: no Triton server answers at {url} (not Triton's health API"), \
        result.output
    assert not (tmp_path / "r").exists()


def test_a_server_restart_is_one_outage_with_few_errors_and_the_next_level_runs(own, repo, triton_binary,
                                                                                 served_model, tmp_path):
    """SIGKILL mid-level: the level stops after --max-consecutive-errors failures in a row (not a flood of
    errors for the rest of its duration); the load test waits for the server, restarted on the same ports,
    and the next level runs clean. The outage is reported with its start, length and failed requests."""
    from aspp_deploy.serve.server import TritonServer

    old = own.server
    out = tmp_path / "lt.json"
    load = subprocess.Popen([*CLI, "loadtest", f"grpc://{old.grpc_url}", "--images", str(served_model.images),
                             "--concurrency", "4,2", "--requests", "100000", "--duration", "15", "--timeout", "5",
                             "--warmup", "0", "--max-consecutive-errors", "8", "--recover", "120",
                             "--report", str(tmp_path / "r"), "--json", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(6)  # the pre-flight check and some requests of level 1
        old.kill()
        killed_at = time.monotonic()
        time.sleep(3)
        own.server = TritonServer(repo, triton_binary, old.host, old.http_port, old.grpc_port, old.metrics_port)
        own.server.start()
        own.server.wait_ready(READY_TIMEOUT_S)
        back_after = time.monotonic() - killed_at
        output, _ = load.communicate(timeout=180)
    finally:
        if load.poll() is None:
            load.kill()
    assert load.returncode == 1, output  # requests failed: the exit code says so
    assert "Traceback" not in output
    report = json.loads(out.read_text())
    first, second = report["rows"]
    assert first["ok"] > 0 and 8 <= first["errors"] <= 8 + 4, first  # the bound, plus requests in flight
    assert "stopped after" in first["stopped"], first
    assert second["errors"] == 0 and second["ok"] > 0, second
    [outage] = report["outages"]
    assert outage["recovered"] and outage["errors"] == first["errors"], outage
    assert 3 <= outage["length_s"] <= back_after + 10, (outage, back_after)
    assert "outage at" in output and "requests failed" in output
    summary = (tmp_path / "r" / "summary.md").read_text()
    assert "Outages" in summary and f"| {outage['errors']} |" in summary
