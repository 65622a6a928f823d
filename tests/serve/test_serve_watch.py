"""`aspp-deploy serve` watches what it started, on a real tritonserver run as a user runs it (a subprocess
of the console script, so signals behave as in a shell): a killed or frozen Python-backend stub, a
killed server, Ctrl-C, and the message when there is no server binary at all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

from tests.serve.conftest import write_repo

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
CLI = [str(Path(sys.executable).parent / "aspp-deploy")]
READY_S = 120


@pytest.fixture(scope="module")
def watch_repo(tmp_path_factory, served_model, triton_env) -> Path:
    """One service model (one stub): the cheapest real server to start, kill and restart."""
    return write_repo(tmp_path_factory.mktemp("watch") / "repo", served_model, triton_env)


def _cmdline(pid: str) -> List[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _dead(pid: int, within_s: float = 10.0) -> bool:
    """Whether ``pid`` is gone or a zombie (killed, waiting for its new parent, PID 1, to reap it: a
    killed server's orphaned stubs are reaped when PID 1 gets to it, so a signal may still find them),
    looking again until ``within_s`` has passed."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X") or time.monotonic() > deadline:
            return state in ("Z", "X")
        time.sleep(0.1)


def _pids(match) -> List[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and match(_cmdline(p))]


class Serve:
    """`aspp-deploy serve` on free ports, its output read as it comes, each line with the time it came."""

    def __init__(self, repo: Path, *args: str, log: Optional[Path] = None) -> None:
        from aspp_deploy.serve.server import free_port

        self.http, self.grpc, self.metrics = free_port(), free_port(), free_port()
        cmd = [*CLI, "serve", str(repo), "--http-port", str(self.http), "--grpc-port", str(self.grpc),
               "--metrics-port", str(self.metrics), "--health-interval", "1", "--health-timeout", "3", *args]
        if log is not None:
            cmd += ["--log", str(log)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: List[Tuple[float, str]] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for("Ctrl-C stops it", READY_S)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def wait_for(self, text: str, timeout: float) -> float:
        """When a line holding ``text`` came (monotonic time); fails with the output so far."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in list(self.lines):
                if text in line:
                    return at
            if self.proc.poll() is not None and not any(text in line for _, line in self.lines):
                time.sleep(0.5)  # the reader's last lines
                if not any(text in line for _, line in self.lines):
                    break
            time.sleep(0.05)
        pytest.fail(f"serve never printed {text!r}:\n{self.text}")

    def exit(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        time.sleep(0.3)
        return code

    def server_pid(self) -> int:
        (pid,) = _pids(lambda c: c[0].endswith("tritonserver") and f"--http-port={self.http}" in c)
        return pid

    def stub_pid(self, model: str = "aspp") -> int:
        """The Python-backend stub of ``model``'s first instance, started by this serve's server."""
        server = str(self.server_pid())
        (pid,) = _pids(lambda c: c[0].endswith("triton_python_backend_stub") and f"{model}_0_0" in c and server in c)
        return pid

    def infer(self) -> Tuple[int, dict]:
        """A 1 x 8 x 8 RGB image through the HTTP API: (status, JSON answer)."""
        body = {"inputs": [{"name": "RAW", "shape": [1, 8, 8, 3], "datatype": "UINT8", "data": [7] * 192}]}
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}/v2/models/aspp/infer",
                                     data=json.dumps(body).encode(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read().decode())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read().decode())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
            for pid in _pids(lambda c: c[0].endswith("tritonserver") and f"--http-port={self.http}" in c):
                os.kill(pid, signal.SIGKILL)


def _errors(text: str) -> List[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def test_a_killed_or_frozen_stub_gets_the_server_restarted_and_the_model_answers_again(watch_repo, tmp_path):
    log = tmp_path / "server.log"
    serve = Serve(watch_repo, "--restarts", "1", "--grace", "1", log=log)
    try:
        status, answer = serve.infer()
        assert status == 200 and answer["outputs"][0]["shape"] == [1, 8, 8], answer
        first = serve.stub_pid()
        os.kill(first, signal.SIGKILL)
        killed = time.monotonic()
        line_at = serve.wait_for("restarted tritonserver", 60)
        line = next(line for _, line in serve.lines if "restarted tritonserver" in line)
        assert line.startswith("model aspp stopped answering (Stub process 'aspp_0_0' is not healthy)"), line
        assert serve.infer()[0] == 200
        second = serve.stub_pid()
        assert second != first
        print(f"\nkill -9 stub: restarted and answering {line_at - killed:.1f} s later")
        # Frozen (SIGSTOP): Triton still calls it ready; the test inference finds it, a restart replaces it.
        os.kill(second, signal.SIGSTOP)
        frozen = time.monotonic()
        serve.lines.clear()
        line_at = serve.wait_for("restarted tritonserver", 60)
        print(f"SIGSTOP stub: restarted and answering {line_at - frozen:.1f} s later")
        assert serve.infer()[0] == 200
        assert _dead(second)  # the frozen stub went with the old server: nothing left to resume
        assert log.read_text().count('"Started HTTPService at') == 3  # --log holds the log of every run
        # Ctrl-C with a keep-alive HTTP connection open: bounded by --grace, not Triton's 30 s.
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", serve.http, timeout=10)
        conn.request("GET", "/v2/health/ready")
        assert conn.getresponse().read() == b""
        serve.proc.send_signal(signal.SIGINT)
        began = time.monotonic()
        assert serve.exit(30) == 0, serve.text
        print(f"Ctrl-C with a keep-alive connection: serve exited {time.monotonic() - began:.1f} s later")
        assert time.monotonic() - began < 15
        conn.close()
        assert "stopped: tritonserver" in serve.text and "after SIGINT" in serve.text
        assert not _errors(serve.text) and "Traceback" not in serve.text
    finally:
        serve.close()


def test_a_frozen_stub_with_no_restarts_stops_serve_with_the_true_reason(watch_repo):
    serve = Serve(watch_repo, "--restarts", "0")
    try:
        stub = serve.stub_pid()
        os.kill(stub, signal.SIGSTOP)
        frozen = time.monotonic()
        code = serve.exit(60)
        took = time.monotonic() - frozen
        print(f"\nSIGSTOP stub, --restarts 0: serve exited {took:.1f} s later")
        assert code == 1, serve.text
        errors = _errors(serve.text)
        assert len(errors) == 1, serve.text
        assert errors[0].startswith("error: model aspp stopped answering: ") and "--restarts 0" in errors[0]
        assert "server log: " in errors[0] and "Traceback" not in serve.text
        assert took < 1 + 3 + 3 + 10  # the interval, the test inference's timeout, the wait for progress, the stop
        # Nothing is left that calls itself ready: not the server, not the frozen stub.
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{serve.http}/v2/models/aspp/ready", timeout=3)
        assert not Path(f"/proc/{stub}").exists() or "Z" in Path(f"/proc/{stub}/stat").read_text().split()[2]
    finally:
        serve.close()


def test_a_killed_server_is_named_by_its_signal_not_by_a_start_up_warning(watch_repo):
    serve = Serve(watch_repo, "--health-interval", "0")  # the process watch alone, no test inferences
    try:
        assert "watching:" not in serve.text
        os.kill(serve.server_pid(), signal.SIGKILL)
        killed = time.monotonic()
        code = serve.exit(30)
        print(f"\nkill -9 tritonserver: serve exited {time.monotonic() - killed:.1f} s later")
        assert code == 1, serve.text
        errors = _errors(serve.text)
        assert len(errors) == 1 and "tritonserver was killed by SIGKILL" in errors[0], serve.text
        assert time.monotonic() - killed < 10
        assert "NVML" not in serve.text and "Traceback" not in serve.text
    finally:
        serve.close()


def test_no_server_binary_says_where_one_comes_from(monkeypatch, tmp_path):
    from aspp_deploy.errors import MissingDependencyError
    from aspp_deploy.serve import server

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(server, "CONTAINER_BINARY", tmp_path / "none" / "tritonserver")
    monkeypatch.setattr(server, "_pytriton_root", lambda: None)
    with pytest.raises(MissingDependencyError) as caught:
        server.find_server()
    message = str(caught.value)
    assert "pip install --no-deps nvidia-pytriton==0.7.0" in message and "--server PATH" in message
    assert "aspp-deploy[serve]" not in message  # that extra holds the clients only


def test_probe_request_fits_the_service_and_a_network_model():
    from aspp_deploy.serve.server import probe_request

    service = {"max_batch_size": 8, "input": [
        {"name": "IMAGE", "data_type": "TYPE_STRING", "dims": [1], "optional": True},
        {"name": "RAW", "data_type": "TYPE_UINT8", "dims": [-1, -1, 3], "optional": True}]}
    assert probe_request(service) == {"inputs": [{"name": "RAW", "shape": [1, 1, 1, 3], "datatype": "UINT8",
                                                  "data": [0, 0, 0]}]}
    network = {"max_batch_size": 0, "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 3, 2, 2]}]}
    (x,) = probe_request(network)["inputs"]
    assert x["shape"] == [1, 3, 2, 2] and x["datatype"] == "FP32" and len(x["data"]) == 12


def test_a_busy_model_is_not_taken_for_a_dead_one(watch_repo):
    """Test inferences that wait behind a queue of real requests time out, but the model answers the
    others meanwhile (Triton's statistics): busy, not dead, so no restart under load."""
    import io

    import numpy as np
    import tritonclient.grpc as grpc
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)).save(buf, "PNG")
    image = buf.getvalue()
    serve = Serve(watch_repo, "--health-timeout", "0.01", "--restarts", "1")
    stop = threading.Event()
    answered: List[int] = []

    def client() -> None:
        c = grpc.InferenceServerClient(f"127.0.0.1:{serve.grpc}")
        inp = grpc.InferInput("IMAGE", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[image]], dtype=np.object_))
        try:
            while not stop.is_set():
                c.infer("aspp", [inp])
                answered.append(1)
        finally:
            c.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        time.sleep(8)  # about 8 test inferences, each with 10 ms to answer behind 8 clients' requests
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert len(answered) > 20
        assert serve.proc.poll() is None, serve.text
        assert "stopped answering" not in serve.text and not _errors(serve.text), serve.text
    finally:
        serve.close()


# Triton 2.51's own lines at a stop under load whose exit timeout (--grace) expired, as serve's log kept them
STOP_UNDER_LOAD = [
    'I1203 08:02:20.472 17818 server.cc:321] "Timeout 5: Found 1 model versions that have in-flight inferences"',
    'I1203 08:02:20.472 17818 server.cc:325] "Model \'aspp_nobatch\' (version 1) has 2 in-flight inferences"',
    'I1203 08:02:20.473 17818 server.cc:325] "Model \'aspp\' (version 1) has 7 in-flight inferences"',
    'I1203 08:02:25.473 17818 server.cc:305] "Waiting for in-flight requests to complete."',
    'I1203 08:02:25.473 17818 server.cc:321] "Timeout 0: Found 1 model versions that have in-flight inferences"',
    'I1203 08:02:25.473 17818 server.cc:325] "Model \'aspp\' (version 1) has 5 in-flight inferences"',
    'E1203 08:02:25.473 17818 main.cc:535] "failed to stop server: Internal - Exit timeout expired. Exiting immediately."',
]


def test_a_stop_that_drops_requests_says_how_many():
    """Ctrl-C under load: the requests still in flight at Triton's last count are said to be dropped (an
    earlier count, or a model that drained meanwhile, is not); a stop within the grace period says nothing."""
    from aspp_deploy.serve.server import in_flight_note

    assert in_flight_note(STOP_UNDER_LOAD) == ("the grace period ended with 5 request(s) still in flight: "
                                               "they were dropped")
    unloading = [STOP_UNDER_LOAD[3], STOP_UNDER_LOAD[4].replace("Found 1", "Found 0"), STOP_UNDER_LOAD[6]]
    assert in_flight_note(unloading) == "the grace period ended while models were still unloading (no request in flight)"
    assert in_flight_note(STOP_UNDER_LOAD[:6]) == ""  # it exited within the grace period
