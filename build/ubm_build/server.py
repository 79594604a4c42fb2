"""Run the real `tritonserver` shipped in the `nvidia-pytriton` wheel, without Docker.

The wheel carries the server binary, its shared libraries, the python backend and one backend
stub per Python version. `TritonServer` assembles a backend directory holding the stub that
matches this interpreter, starts the server on our own model repository and waits until the
ensemble is ready. The python backend's stub runs in *this* virtual environment: it finds its
interpreter through ``PATH``, so the environment's ``bin/`` goes first there.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytriton

from ubm import contract

PYTRITON_DIR = Path(pytriton.__file__).resolve().parent / "tritonserver"
PYTRITON_LIBS = PYTRITON_DIR.parent.parent / "nvidia_pytriton.libs"
DEFAULT_STARTUP_TIMEOUT_S = 180.0
DEFAULT_STOP_TIMEOUT_S = 30.0


class ServerError(RuntimeError):
    """tritonserver failed to start, to become ready, or to stop."""


@dataclass(frozen=True, kw_only=True)
class Ports:
    grpc: int = contract.DEFAULT_GRPC_PORT
    http: int = contract.DEFAULT_HTTP_PORT
    metrics: int = contract.DEFAULT_METRICS_PORT

    @classmethod
    def free(cls) -> Ports:
        """Three ports nobody listens on now (for tests and benchmarks)."""
        return cls(grpc=free_port(), http=free_port(), metrics=free_port())

    @classmethod
    def from_env(cls) -> Ports:
        """Ports from UBM_GRPC_PORT, UBM_HTTP_PORT, UBM_METRICS_PORT (default 8001/8000/8002)."""
        return cls(
            grpc=int(os.environ.get("UBM_GRPC_PORT", contract.DEFAULT_GRPC_PORT)),
            http=int(os.environ.get("UBM_HTTP_PORT", contract.DEFAULT_HTTP_PORT)),
            metrics=int(os.environ.get("UBM_METRICS_PORT", contract.DEFAULT_METRICS_PORT)),
        )


def free_port() -> int:
    """A localhost TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assemble_backends(directory: Path) -> Path:
    """Write a Triton backend directory with the python backend for this interpreter."""
    stub = (
        PYTRITON_DIR / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
    )
    if not stub.is_dir():
        raise ServerError(f"nvidia-pytriton ships no python backend stub for Python {sys.version}")
    python_dir = directory / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for source in [
        *(PYTRITON_DIR / "backends" / "python").glob("*.*"),
        stub / "triton_python_backend_stub",
    ]:
        if source.is_file():
            shutil.copy2(source, python_dir / source.name)
    return directory


def server_environment() -> dict[str, str]:
    """Environment in which the server and its python-backend stubs find their libraries."""
    env = dict(os.environ)
    libpython_dir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(PYTRITON_LIBS), libpython_dir, env.get("LD_LIBRARY_PATH", "")) if p
    )
    env["PATH"] = os.pathsep.join((str(Path(sys.prefix) / "bin"), env.get("PATH", "")))
    return env


class TritonServer:
    """A `tritonserver` process serving one model repository on localhost.

    Use as a context manager, or call `start` and `stop`. Logs go to `log_path`.
    """

    def __init__(
        self,
        model_repository: Path,
        *,
        workdir: Path,
        ports: Ports | None = None,
        host: str = "127.0.0.1",
        verbose: bool = False,
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.workdir = Path(workdir).resolve()
        self.ports = ports or Ports()
        self.host = host
        self.verbose = verbose
        self.log_path = self.workdir / "tritonserver.log"
        self._process: subprocess.Popen | None = None

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports.metrics}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def command(self) -> list[str]:
        backends = assemble_backends(self.workdir / "backends")
        return [
            str(PYTRITON_DIR / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backends}",
            "--model-control-mode=none",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.ports.grpc}",
            f"--http-address={self.host}",
            f"--http-port={self.ports.http}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.ports.metrics}",
            "--allow-gpu-metrics=false",
            f"--log-verbose={1 if self.verbose else 0}",
            "--exit-timeout-secs=10",
        ]

    def start(self, *, detach: bool = False) -> None:
        """Start the server; `detach` lets it outlive this Python process (``make serve``)."""
        if self._process is not None:
            raise ServerError("server already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=server_environment(),
                start_new_session=detach,
            )

    def is_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _http_ok(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://{self.host}:{self.ports.http}{path}", timeout=2
            ) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(
        self, model: str = contract.ENSEMBLE, timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S
    ) -> None:
        """Block until the server and `model` are ready.

        Raises:
            ServerError: the process exited or `timeout_s` passed (the message ends with
                the log's tail).
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.is_alive():
                raise ServerError(f"tritonserver exited during start-up\n{self.log_tail()}")
            if self._http_ok("/v2/health/ready") and self._http_ok(f"/v2/models/{model}/ready"):
                return
            time.sleep(0.25)
        raise ServerError(f"model {model!r} not ready after {timeout_s:.0f} s\n{self.log_tail()}")

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Ask the server to shut down (SIGINT), and kill it if it has not within `timeout_s`."""
        if self._process is None:
            return
        stop_process(self._process.pid, timeout_s, self._process)
        self._process = None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no server log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join([f"--- last lines of {self.log_path} ---", *text[-lines:]])

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def process_alive(pid: int) -> bool:
    """Whether `pid` runs (an exited orphan stays a zombie until its new parent reaps it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z")


def stop_process(pid: int, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    """SIGINT `pid`, wait up to `timeout_s` for it to exit, then SIGKILL it.

    Pass `process` when `pid` is our child, so that it is reaped.
    """

    def alive() -> bool:
        return process.poll() is None if process else process_alive(pid)

    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive():
        os.kill(pid, signal.SIGKILL)
        if process:
            process.wait()
