"""Run a real ``tritonserver`` on a model repository: find it, start it, wait until every model is
ready, stop it cleanly.

The binary is, in this order: ``--server PATH``; ``tritonserver`` on PATH or in
``/opt/tritonserver/bin`` (NVIDIA's container, with its ONNX Runtime, TensorRT and Python backends);
the one the ``nvidia-pytriton`` wheel ships (the ``serve`` extra: Python backend only). That wheel keeps
one backend stub per Python version apart from the backend, so a backend folder is assembled for the
running Python in a temporary folder (links, nothing copied) and removed when the server stops.

A model that fails to load is one ``InputError`` naming the model and Triton's reason, read from the
server's own log.
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
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional

from aspp_deploy.errors import InputError, MissingDependencyError

CONTAINER_BINARY = Path("/opt/tritonserver/bin/tritonserver")
SERVE_HINT = "pip install 'aspp-deploy[serve]' (ships a tritonserver with its Python backend), or run in " \
             "NVIDIA's tritonserver container"
FAILED_LOAD = re.compile(r"failed to load '([^']+)' version (\d+): (.*?)\"?$")
LOG_LINES = 400
# Triton's APIs (the names its --http-restricted-api / --grpc-restricted-protocol take). A server we
# start answers health, metadata, model configuration and inference (what clients and perf_analyzer
# need); the others are restricted unless ``allow_api`` opens them: shared memory (a client could make
# the server read or write a /dev/shm object it names, or the Python backend's own regions), model
# loading/unloading, statistics, tracing and logging settings.
OPEN_APIS = ("health", "metadata", "model-config", "inference")
RESTRICTED_APIS = ("shared-memory", "model-repository", "statistics", "trace", "logging")
RESTRICTION_HEADER = "aspp-deploy-restricted"


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
    from aspp_deploy.bundle.triton import pbtxt_quote, pbtxt_unquote

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
    log: Deque[str] = field(default_factory=lambda: collections.deque(maxlen=LOG_LINES))
    process: Optional[subprocess.Popen] = None
    _tmp: Optional[Path] = None
    _tmp_folder: Any = None
    _reader: Optional[threading.Thread] = None

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def command(self, backends: Optional[Path]) -> List[str]:
        cmd = [str(self.binary.path), f"--model-repository={self.repo.resolve()}",
               f"--http-address={self.host}", f"--http-port={self.http_port}",
               f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
               f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
               "--exit-on-error=true", "--strict-readiness=true", "--log-verbose=0",
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
        self.process = subprocess.Popen(self.command(backends), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, text=True, errors="replace",
                                        start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            line = line.rstrip("\n")
            self.log.append(line)
            if self.echo is not None:
                self.echo(line)

    def _get(self, path: str, timeout: float = 2.0) -> int:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=timeout) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (OSError, ValueError):
            return 0

    def failure(self) -> str:
        """Why the server stopped or a model did not load, from its log."""
        for line in self.log:
            m = FAILED_LOAD.search(line)
            if m:
                return f"Triton could not load model {m.group(1)} (version {m.group(2)}): {m.group(3).strip()}"
        for line in reversed(self.log):
            if "error:" in line.lower() or line.startswith("E"):
                text = re.sub(r"^[EWI]\d{4} [\d:.]+ \d+ [\w.]+:\d+\] ", "", line).strip().strip('"')
                return f"tritonserver: {text}"
        code = self.process.returncode if self.process is not None else None
        return f"tritonserver exited with code {code}"

    def wait_ready(self, timeout: float = 120.0) -> List[str]:
        """Block until the server and every model in the repository are ready; returns the models."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if self._reader is not None:
                    self._reader.join(timeout=5)
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
        return models

    def models(self) -> List[str]:
        """The repository's models (its folders with a config.pbtxt): read from disk, since the
        repository API is restricted by default."""
        return sorted(c.parent.name for c in self.repo.glob("*/config.pbtxt"))

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        """SIGINT (Triton drains in-flight requests), then SIGKILL after ``timeout``; returns the exit code."""
        code = None
        if self.process is not None:
            if self.process.poll() is None:
                try:
                    self.process.send_signal(signal.SIGINT)
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=10)
            code = self.process.returncode
            try:  # backend stubs outlive a killed server: the server's session goes with it
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if self._reader is not None:
                self._reader.join(timeout=5)
            if self.process.stdout is not None and (self._reader is None or not self._reader.is_alive()):
                self.process.stdout.close()  # the log pipe, once its reader is done with it
        if self._tmp is not None:
            self._tmp_folder.cleanup()
            self._tmp = None
        for region in Path("/dev/shm").glob(self.shm_prefix + "*"):
            region.unlink(missing_ok=True)
        return code

    def kill(self) -> None:
        """SIGKILL, no draining (what a crash looks like to clients)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
