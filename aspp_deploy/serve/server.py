"""Run a real ``tritonserver`` on a model repository: find it, start it, wait until every model is
ready, stop it cleanly.

The binary is, in this order: ``--server PATH``; ``tritonserver`` on PATH or in
``/opt/tritonserver/bin`` (NVIDIA's container, with its ONNX Runtime, TensorRT and Python backends);
the one the ``nvidia-pytriton`` wheel ships (installed with ``--no-deps``, not by the ``serve`` extra,
which holds the clients; Python backend only). That wheel keeps one backend stub per Python version
apart from the backend, so a backend folder is assembled for the running Python in a temporary folder
(links, nothing copied) and removed when the server stops.

A model that fails to load is one ``InputError`` naming the model and Triton's reason, read from the
server's own log (kept in a file as well, ``log_file``).

Once ready, ``watch`` keeps the server honest: a server that exits is reported with its exit status
or signal and its own error lines since it became ready (not a start-up warning); every few seconds
each model gets a tiny real inference through the HTTP API, and a model that does not answer (a dead
or frozen Python-backend stub: Triton still calls it ready) gets the server restarted, a bounded number
of times, or the server stopped and one line saying why.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Tuple

from aspp_deploy.serve.triton_config import pbtxt_quote, pbtxt_unquote
from aspp_deploy.errors import AsppDeployError, InputError, MissingDependencyError, ServeFailure

CONTAINER_BINARY = Path("/opt/tritonserver/bin/tritonserver")
SERVE_HINT = ("install the nvidia-pytriton wheel, which ships one with its Python backend: `pip install --no-deps "
              "nvidia-pytriton==0.7.0` (docs/serving.md says why --no-deps); or run in NVIDIA's tritonserver "
              "container, or give --server PATH")
FAILED_LOAD = re.compile(r"failed to load '([^']+)' version (\d+): (.*?)\"?$")
IN_FLIGHT_COUNT = re.compile(r"Found \d+ model versions that have in-flight inferences")  # each count, then a line per model
IN_FLIGHT = re.compile(r"Model '([^']+)' \(version (\d+)\) has (\d+) in-flight inferences")
LOG_LINES = 400
# Triton's APIs (the names its --http-restricted-api / --grpc-restricted-protocol take). A server we
# start answers health, metadata, model configuration and inference (what clients and perf_analyzer
# need); the others are restricted unless ``allow_api`` opens them: shared memory (a client could make
# the server read or write a /dev/shm object it names, or the Python backend's own regions), model
# loading/unloading, statistics, tracing and logging settings.
OPEN_APIS = ("health", "metadata", "model-config", "inference")
RESTRICTED_APIS = ("shared-memory", "model-repository", "statistics", "trace", "logging")
RESTRICTION_HEADER = "aspp-deploy-restricted"
# What a CPU-only machine makes every tritonserver log at start-up, whatever happens next: never a
# reason for a failure.
HARMLESS = re.compile(r"NVML|DCGM|pinned (system )?memory|CudaDriverHelper|CUDA driver version is insufficient|"
                      r"cuda_memory_manager|GPU metrics", re.IGNORECASE)
STACK_FRAME = re.compile(r"^\d+# ")  # what Triton prints after "Signal (6) received."
LOG_PREFIX = re.compile(r"^([EWI])\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] ")


def restricted_apis(allow: Iterable[str] = ()) -> List[str]:
    """The APIs to restrict once ``allow`` is opened; InputError naming an unknown API."""
    allow = [a.strip() for a in allow if a.strip()]
    unknown = [a for a in allow if a not in RESTRICTED_APIS + OPEN_APIS]
    if unknown:
        raise InputError(f"--allow-api {','.join(unknown)}: unknown API; choose from {', '.join(RESTRICTED_APIS)} "
                         f"({', '.join(OPEN_APIS)} are always open)")
    return [a for a in RESTRICTED_APIS if a not in allow]


def restriction_flags(apis: List[str]) -> List[str]:
    """tritonserver flags that restrict ``apis`` on HTTP and gRPC to requests carrying a header whose
    value no client can send: a newline (not allowed in an HTTP header value or in gRPC metadata)
    followed by a random token, so the restricted APIs are closed to every client, not only to those
    that cannot read this process's command line."""
    if not apis:
        return []
    value = "\n" + secrets.token_hex(16)
    spec = f"{','.join(apis)}:{RESTRICTION_HEADER}={value}"
    return [f"--http-restricted-api={spec}", f"--grpc-restricted-protocol={spec}"]


@dataclass
class ServerBinary:
    path: Path
    backends: Optional[Path]  # --backend-directory; None: the server's default
    origin: str               # "given", "PATH", "container" or "nvidia-pytriton"
    stub_numpy_major: Optional[int] = None  # the NumPy the pytriton stub is built for


def _pytriton_root() -> Optional[Path]:
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]) / "tritonserver"
    return root if (root / "bin" / "tritonserver").is_file() else None


def find_server(given: Optional[Path] = None) -> ServerBinary:
    """The ``tritonserver`` to run (see the module's docstring for the order)."""
    if given is not None:
        if not given.is_file() or not os.access(given, os.X_OK):
            raise InputError(f"--server {given}: not an executable file")
        return ServerBinary(given, None, "given")
    on_path = shutil.which("tritonserver")
    if on_path:
        return ServerBinary(Path(on_path), None, "PATH")
    if CONTAINER_BINARY.is_file():
        return ServerBinary(CONTAINER_BINARY, None, "container")
    root = _pytriton_root()
    if root is not None:
        return ServerBinary(root / "bin" / "tritonserver", root / "backends", "nvidia-pytriton", stub_numpy_major=1)
    raise MissingDependencyError(f"no tritonserver found (not on PATH, not in /opt/tritonserver): {SERVE_HINT}")


def _pytriton_backends(binary: ServerBinary, into: Path) -> Path:
    """A backend folder for nvidia-pytriton's server: its Python backend plus the stub for this Python."""
    assert binary.backends is not None
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = binary.backends.parent / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise MissingDependencyError(f"nvidia-pytriton has no Python backend stub for Python {version}")
    python = into / "python"
    python.mkdir(parents=True)
    for item in (binary.backends / "python").iterdir():
        if item.is_file():
            (python / item.name).symlink_to(item)
    (python / stub.name).symlink_to(stub)
    return into


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# -- the repository, checked before the server starts ---------------------------------------------------


def _param(config: str, key: str) -> Optional[str]:
    """A string parameter of a ``config.pbtxt`` (its text-format escapes undone)."""

    m = re.search(r'key:\s*' + re.escape(pbtxt_quote(key)) + r'\s*value:?\s*{\s*string_value:\s*"((?:[^"\\]|\\.)*)"',
                  config)
    return pbtxt_unquote(m.group(1)) if m else None


def python_envs(repo: Path) -> Dict[str, Optional[str]]:
    """Python-backend models of ``repo`` -> their ``EXECUTION_ENV_PATH`` (None: the server's Python)."""
    found: Dict[str, Optional[str]] = {}
    for config in sorted(repo.glob("*/config.pbtxt")):
        text = config.read_text(errors="replace")
        if re.search(r'backend:\s*"python"', text):
            found[config.parent.name] = _param(text, "EXECUTION_ENV_PATH")
    return found


def _env_numpy_major(env: Path) -> Optional[int]:
    python = env / "bin" / "python"
    if not python.exists():
        return None
    try:
        done = subprocess.run([str(python), "-c", "import numpy; print(numpy.__version__)"], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = done.stdout.strip()
    return int(text.split(".")[0]) if done.returncode == 0 and text[:1].isdigit() else None


def check_repository(repo: Path, binary: ServerBinary) -> None:
    """Refuse, with one line, what would make Triton fail in a way its log says badly."""
    if not repo.is_dir():
        raise InputError(f"model repository not found: {repo}")
    if not any(repo.glob("*/config.pbtxt")):
        raise InputError(f"{repo} holds no model (no <model>/config.pbtxt): write one with `aspp-deploy triton`")
    for model, env in python_envs(repo).items():
        if env is None:
            if binary.origin == "nvidia-pytriton":
                raise InputError(f"model {model} runs in the server's own Python, which nvidia-pytriton's server "
                                 "does not have: write the repository with --python-env (make one with "
                                 "`aspp-deploy triton-env DIR`)")
            continue
        path = Path(env.replace("$$TRITON_MODEL_DIRECTORY", str(repo / model)))
        if not path.exists():
            raise InputError(f"model {model}: its Python environment {path} does not exist "
                             "(make one with `aspp-deploy triton-env DIR`)")
        if path.is_dir() and not (path / "bin" / "activate").is_file():
            raise InputError(f"model {model}: {path} is not a Python environment (no bin/activate)")
        if path.is_dir() and binary.stub_numpy_major is not None:
            major = _env_numpy_major(path)
            if major is not None and major != binary.stub_numpy_major:
                raise InputError(f"model {model}: {path} has NumPy {major}.x, but the Python backend of this "
                                 f"tritonserver ({binary.origin}) is built for NumPy {binary.stub_numpy_major}.x, "
                                 "which corrupts tensors: make the environment with `aspp-deploy triton-env DIR`")


# -- the server -----------------------------------------------------------------------------------------


TIMED_OUT = "no answer to a test request within"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def in_flight_note(lines: List[str]) -> str:
    """What Triton's log says of a stop whose exit timeout (``--grace``) expired: the requests still in
    flight at its last count (dropped: their clients got errors), or that models were still unloading;
    "" when the timeout did not expire."""
    if not any("Exit timeout expired" in line for line in lines):
        return ""
    counts = [i for i, line in enumerate(lines) if IN_FLIGHT_COUNT.search(line)]
    last = lines[counts[-1] + 1:] if counts else []
    dropped = sum(int(m.group(3)) for m in map(IN_FLIGHT.search, last) if m)
    if dropped:
        return f"the grace period ended with {dropped} request(s) still in flight: they were dropped"
    return "the grace period ended while models were still unloading (no request in flight)"


def exit_reason(code: Optional[int]) -> str:
    """A process's exit status in words: ``killed by SIGKILL``, ``exited with status 1``."""
    if code is None:
        return "is still running"
    if code < 0:
        return f"was killed by {_signal_name(-code)}"
    return f"exited with status {code}"


def _log_text(line: str) -> str:
    """A log line without Triton's ``E1202 17:43:00.12 5025 file.cc:241]`` prefix and quotes."""
    return LOG_PREFIX.sub("", line).strip().strip('"')


def is_error_line(line: str) -> bool:
    """A log line that may say why the server or a model failed: not Triton's info lines, tables and
    blank lines, and not the start-up warnings every CPU-only machine gets (NVML, DCGM, pinned memory)."""
    text = line.strip()
    if not text or text[0] in "+|" or HARMLESS.search(text) or STACK_FRAME.match(text):
        return False
    m = LOG_PREFIX.match(text)
    return m is None or m.group(1) != "I"


@dataclass
class TritonServer:
    """A ``tritonserver`` process on ``repo``; use as a context manager or ``start()``/``stop()``."""

    repo: Path
    binary: ServerBinary
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    echo: Optional[Callable[[str], None]] = None  # every log line, as it comes
    allow_api: List[str] = field(default_factory=list)  # restricted APIs to open (see RESTRICTED_APIS)
    log_file: Optional[Path] = None  # every log line is appended here too, over restarts
    grace: float = 30.0  # seconds in-flight requests get on stop (Triton's --exit-timeout-secs) before SIGKILL
    log: Deque[str] = field(default_factory=lambda: collections.deque(maxlen=LOG_LINES))
    process: Optional[subprocess.Popen] = None
    stop_note: str = ""  # how the last stop went, in words
    _lines: int = 0  # log lines read so far (the deque keeps the last LOG_LINES)
    _ready_mark: int = 0  # ``_lines`` when the server became ready
    _tmp: Optional[Path] = None
    _tmp_folder: Any = None
    _reader: Optional[threading.Thread] = None
    _log_handle: Any = None

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def _local(self) -> str:
        """Where this process reaches the HTTP port (a server on every interface answers on loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "[::]": "[::1]"}.get(self.host, self.host)
        return f"{host}:{self.http_port}"

    def command(self, backends: Optional[Path]) -> List[str]:
        cmd = [str(self.binary.path), f"--model-repository={self.repo.resolve()}",
               f"--http-address={self.host}", f"--http-port={self.http_port}",
               f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
               f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
               "--exit-on-error=true", "--strict-readiness=true", "--log-verbose=0",
               f"--exit-timeout-secs={max(0, int(self.grace))}",
               *restriction_flags(restricted_apis(self.allow_api))]
        if backends is not None:
            cmd.append(f"--backend-directory={backends}")
        # A prefix of our own for the Python backend's shared memory, so what a killed server leaves in
        # /dev/shm can be removed (and two servers on one machine never share a region name).
        cmd.append(f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}")
        return cmd

    @property
    def shm_prefix(self) -> str:
        return f"aspp_triton_{os.getpid()}_{self.http_port}_"

    def start(self) -> "TritonServer":
        restricted_apis(self.allow_api)  # an unknown name is refused before anything starts
        check_repository(self.repo, self.binary)
        backends = None
        if self.binary.origin == "nvidia-pytriton":
            from aspp_deploy.io import TempFolder

            self._tmp_folder = TempFolder("aspp-triton-")  # pid-stamped and locked: a killed serve's is cleaned
            self._tmp = tmp = self._tmp_folder.path
            backends = _pytriton_backends(self.binary, tmp / "backends")
        if self.log_file is not None and self._log_handle is None:
            self._log_handle = open(self.log_file, "a", encoding="utf-8", errors="replace", buffering=1)
        self.log.clear()
        self._lines = self._ready_mark = 0
        self.process = subprocess.Popen(self.command(backends), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, text=True, errors="replace",
                                        start_new_session=True)
        self._reader = threading.Thread(target=self._read, args=(self.process, self._log_handle), daemon=True)
        self._reader.start()
        return self

    def _read(self, process: subprocess.Popen, handle: Any) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            self.log.append(line)
            self._lines += 1
            if handle is not None:
                try:
                    handle.write(line + "\n")
                except (OSError, ValueError):
                    pass  # a full disk or a closed file never stops the server's log pipe
            if self.echo is not None:
                self.echo(line)

    def _get(self, path: str, timeout: float = 2.0) -> int:
        try:
            with urllib.request.urlopen(f"http://{self._local}{path}", timeout=timeout) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (OSError, ValueError):
            return 0

    def _join_reader(self, timeout: float = 5.0) -> None:
        if self._reader is not None:
            self._reader.join(timeout=timeout)

    def failure(self) -> str:
        """Why the server stopped or a model did not load, from its log."""
        for line in self.log:
            m = FAILED_LOAD.search(line)
            if m:
                return f"Triton could not load model {m.group(1)} (version {m.group(2)}): {m.group(3).strip()}"
        errors = [line for line in self.log if is_error_line(line)]
        code = self.process.returncode if self.process is not None else None
        reason = f"tritonserver {exit_reason(code)}"
        return f"{reason}: {_log_text(errors[-1])}" if errors else reason

    def errors_since_ready(self, limit: int = 8) -> List[str]:
        """The server's own error lines (see ``is_error_line``) logged since it became ready."""
        new = min(self._lines - self._ready_mark, len(self.log))
        lines = list(self.log)[len(self.log) - new:] if new > 0 else []
        return [_log_text(line) for line in lines if is_error_line(line)][-limit:]

    def wait_ready(self, timeout: float = 120.0) -> List[str]:
        """Block until the server and every model in the repository are ready; returns the models."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._join_reader()
                raise InputError(self.failure())
            if self._get("/v2/health/ready") == 200:
                break
            time.sleep(0.2)
        else:
            self.stop()
            raise InputError(f"tritonserver did not become ready within {timeout:.0f} s "
                             f"(last log line: {self.log[-1] if self.log else 'none'})")
        models = self.models()
        not_ready = [m for m in models if self._get(f"/v2/models/{m}/ready") != 200]
        if not_ready:
            self.stop()
            raise InputError(f"model(s) {', '.join(not_ready)} not ready: {self.failure()}")
        self._ready_mark = self._lines
        return models

    def models(self) -> List[str]:
        """The repository's models (its folders with a config.pbtxt): read from disk, since the
        repository API is restricted by default."""
        return sorted(c.parent.name for c in self.repo.glob("*/config.pbtxt"))

    def stop(self, timeout: Optional[float] = None) -> Optional[int]:
        """SIGINT (Triton finishes in-flight requests for up to ``grace`` s), then SIGKILL once ``timeout``
        (default ``grace`` + 2 s) has passed; returns the exit code and says how it went in ``stop_note``."""
        code = None
        self.stop_note = ""
        if self.process is not None:
            if self.process.poll() is None:
                wait = self.grace + 2.0 if timeout is None else timeout
                began = time.monotonic()
                try:
                    self.process.send_signal(signal.SIGINT)
                    self.process.wait(timeout=wait)
                    self.stop_note = (f"tritonserver {exit_reason(self.process.returncode)} "
                                      f"{time.monotonic() - began:.1f} s after SIGINT")
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=10)
                    self.stop_note = f"tritonserver had not exited {wait:.0f} s after SIGINT: killed (SIGKILL)"
            code = self.process.returncode
            try:  # backend stubs outlive a killed server: the server's session goes with it
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self._join_reader()
            note = in_flight_note(list(self.log)) if self.stop_note else ""
            if note:
                self.stop_note = f"{self.stop_note}; {note}"
            if self.process.stdout is not None and (self._reader is None or not self._reader.is_alive()):
                self.process.stdout.close()  # the log pipe, once its reader is done with it
        if self._tmp is not None:
            self._tmp_folder.cleanup()
            self._tmp = None
        for region in Path("/dev/shm").glob(self.shm_prefix + "*"):
            region.unlink(missing_ok=True)
        return code

    def close_log(self) -> None:
        if self._log_handle is not None:
            self._join_reader()
            self._log_handle.close()
            self._log_handle = None

    def restart(self, timeout: float) -> List[str]:
        """Stop (``grace`` for in-flight requests, then SIGKILL: a frozen stub cannot hold it up) and
        start again on the same ports; returns the ready models."""
        self.stop(timeout=min(self.grace + 2.0, 2.0))
        self.start()
        return self.wait_ready(timeout)

    def kill(self) -> None:
        """SIGKILL, no draining (what a crash looks like to clients)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    # -- is every model answering? ----------------------------------------------------------------------

    def model_config(self, model: str, timeout: float = 10.0) -> Dict[str, Any]:
        """The configuration Triton loaded for ``model`` (the model-configuration API is always open)."""
        import json

        try:
            with urllib.request.urlopen(f"http://{self._local}/v2/models/{model}/config", timeout=timeout) as r:
                return dict(json.loads(r.read().decode()))
        except (OSError, ValueError) as exc:
            raise ServeFailure(f"could not read model {model}'s configuration from the server: {exc}") from None

    def answered(self, model: str, timeout: float = 5.0) -> Optional[int]:
        """How many requests ``model`` has answered since the server started (the metrics port's
        ``nv_inference_request_success``, summed over versions; the statistics API stays restricted);
        None when the server does not say."""
        host = self._local.rsplit(":", 1)[0]
        try:
            with urllib.request.urlopen(f"http://{host}:{self.metrics_port}/metrics", timeout=timeout) as r:
                text = r.read().decode()
        except (OSError, ValueError):
            return None
        pattern = re.compile(rf'^nv_inference_request_success{{model="{re.escape(model)}",version="[^"]*"}} (\S+)$', re.M)
        counts = [float(v) for v in pattern.findall(text)]
        return int(sum(counts)) if counts else None

    def probe(self, model: str, config: Dict[str, Any], timeout: float) -> Optional[str]:
        """One tiny inference of ``model`` over HTTP: None when the model answered (its result, or its
        refusal of the request: HTTP 4xx), else why not (HTTP 5xx with Triton's message, no answer within
        ``timeout`` s, no connection)."""
        import json

        body = json.dumps(probe_request(config)).encode()
        request = urllib.request.Request(f"http://{self._local}/v2/models/{model}/infer", data=body,
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                r.read()
                return None
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                return None
            try:
                message = str(json.loads(exc.read().decode()).get("error") or exc.reason)
            except (OSError, ValueError, AttributeError):
                message = str(exc.reason)
            return message.strip().rstrip(".")
        except (TimeoutError, socket.timeout):
            return f"{TIMED_OUT} {timeout:g} s"
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                return f"{TIMED_OUT} {timeout:g} s"
            return f"no connection to the server ({exc.reason})"
        except OSError as exc:
            return f"no answer to a test request ({exc})"

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# Triton's data types -> (the HTTP API's name, a zero of it in JSON)
_JSON_TYPES = {"TYPE_STRING": ("BYTES", ""), "TYPE_BOOL": ("BOOL", False)}


def probe_request(config: Dict[str, Any]) -> Dict[str, Any]:
    """The smallest valid-looking request for a model's configuration: its required inputs (or, when
    every input is optional, its first numeric one; the segmentation service: a 1x1 ``RAW`` image) as
    zeros, variable dimensions 1, batch 1."""
    inputs = [i for i in config.get("input", []) if not i.get("optional")]
    if not inputs:
        optional = list(config.get("input", []))
        numeric = [i for i in optional if i.get("data_type") != "TYPE_STRING"]
        inputs = (numeric or optional)[:1]
    batched = int(config.get("max_batch_size") or 0) > 0
    request = []
    for spec in inputs:
        dims = [1 if int(d) < 0 else int(d) for d in spec.get("dims", [])]
        shape = ([1] if batched else []) + dims
        kind = str(spec.get("data_type", "TYPE_FP32"))
        name, zero = _JSON_TYPES.get(kind, (kind.replace("TYPE_", ""), 0))
        count = 1
        for d in shape:
            count *= d
        request.append({"name": spec["name"], "shape": shape, "datatype": name, "data": [zero] * count})
    return {"inputs": request}


def watch(server: TritonServer, models: List[str], every: float, timeout: float, restarts: int,
          ready_timeout: float, say: Callable[[str], None]) -> None:
    """Until Ctrl-C (KeyboardInterrupt) or a failure (``ServeFailure``, after the server's own error lines
    went to ``say``): the server process is polled, and every ``every`` s (0: never) each model gets
    ``probe``. A model that does not answer gets the server restarted, up to ``restarts`` times in a row,
    until every model answers again; after that, or with 0, the failure is raised."""
    assert server.process is not None
    configs = {m: server.model_config(m) for m in models} if every > 0 else {}
    started = time.monotonic()
    while True:
        due = time.monotonic() + every if every > 0 else float("inf")
        while time.monotonic() < due:
            if server.process.poll() is not None:
                _died(server, started, say)
            time.sleep(0.2)
        why = _probe_all(server, configs, timeout)
        if why is None:
            continue
        _check_alive(server, started, say)
        model, reason = why
        found = time.monotonic()
        for attempt in range(1, restarts + 1):
            try:
                server.restart(ready_timeout)
            except AsppDeployError as exc:
                reason = f"{reason}; restart {attempt} of {restarts} failed: {exc}"
                continue
            again = _probe_all(server, configs, timeout)
            if again is None:
                say(f"model {model} stopped answering ({reason}): restarted tritonserver "
                    f"(restart {attempt} of {restarts}), every model answers again "
                    f"{time.monotonic() - found:.1f} s after the failed check")
                started = time.monotonic()
                break
            _check_alive(server, started, say)
            reason = f"{reason}; after restart {attempt} of {restarts}: model {again[0]}: {again[1]}"
        else:
            for line in server.errors_since_ready():
                say(f"tritonserver: {line}")
            tail = "not restarted: --restarts 0" if restarts == 0 else "server stopped"
            raise ServeFailure(f"model {model} stopped answering: {reason}; {tail}")


def _probe_all(server: TritonServer, configs: Dict[str, Dict[str, Any]],
               timeout: float) -> Optional[Tuple[str, str]]:
    """The first model that does not answer its test request, and why; None when every one does.

    A test request that times out behind a queue of other requests is not a dead model: when the model
    answered other requests while the test one waited, it is busy and counts as answering."""
    for model, config in configs.items():
        before = server.answered(model)
        why = server.probe(model, config, timeout)
        busy = (why is not None and why.startswith(TIMED_OUT) and before is not None
                and _progress(server, model, before, within=max(timeout, 1.0)))
        if why is not None and not busy:
            return model, why
    return None


def _progress(server: TritonServer, model: str, before: int, within: float) -> bool:
    """Whether ``model`` answers more requests than ``before`` within ``within`` s (the timed-out test
    request among them, once the queue ahead of it drains)."""
    deadline = time.monotonic() + within
    while True:
        now = server.answered(model)
        if now is not None and now > before:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _check_alive(server: TritonServer, started: float, say: Callable[[str], None]) -> None:
    """A failed test request may be the server dying: give it a moment to exit, then say so."""
    assert server.process is not None
    try:
        server.process.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        return
    _died(server, started, say)


def _died(server: TritonServer, started: float, say: Callable[[str], None]) -> None:
    assert server.process is not None
    server._join_reader(timeout=1.0)  # its last lines (the stubs keep the pipe open a moment longer)
    for line in server.errors_since_ready():
        say(f"tritonserver: {line}")
    raise ServeFailure(f"tritonserver {exit_reason(server.process.returncode)} after serving for "
                       f"{time.monotonic() - started:.0f} s")
