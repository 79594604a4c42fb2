"""Run the real `tritonserver` shipped in the `nvidia-pytriton` wheel, without Docker.

The wheel carries the server binary, its shared libraries, the python backend and one backend
stub per Python version. `TritonServer` assembles a backend directory holding the stub that
matches this interpreter, starts the server on our own model repository and waits until the
ensemble is ready. The python backend's stub runs in *this* virtual environment: it finds its
interpreter through ``PATH``, so the environment's ``bin/`` goes first there.

The server runs with ``--model-control-mode=explicit`` and loads the ensemble (which loads its
steps) at start-up; `ubm_build.serving.rollout` switches versions while it runs.

Hardening (the server is started so that):

- Triton's APIs that our SDK never uses (shared-memory registration, logging, trace, model
  repository: loading and unloading models) need a header holding a token generated per start,
  written owner-only to ``<workdir>/admin-token``.
- With a client token (`ServeSettings.token`), inference, metadata, model config and statistics
  need it too (header `contract.TOKEN_HEADER`); health and readiness stay open for probes.
  Without one they are open to whoever reaches the port.
- Both tokens are on tritonserver's command line, which local users can read in /proc unless it
  is mounted with ``hidepid``: they keep out network clients, not other users of the host.
- With TLS, gRPC is encrypted (and with a client CA, clients need a certificate); Triton's HTTP
  endpoint has no TLS, so it then listens on loopback only.
- Everything under the workdir is owner-only (the directory is 0700, files 0600).
- The python backend's shared-memory regions, which hold the raw records, are named with a
  prefix of our own (`shm_prefix`) and made owner-only. The backend sets their mode to 0644
  itself, whatever the umask (077 for the server), so a guard thread tightens them to 0600 as
  they appear, before any request can reach them (at start-up, and while this process runs, for
  the versions a rollout loads). Regions of our prefix that a killed server left behind are
  removed when a server on the same gRPC port starts or stops.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import pytriton

from ubm import contract, pseudonyms
from ubm_build.serving.settings import Ports, ServeSettings, TlsSettings, free_port

__all__ = ["Ports", "ServerError", "TritonServer", "free_port"]

PYTRITON_DIR = Path(pytriton.__file__).resolve().parent / "tritonserver"
PYTRITON_LIBS = PYTRITON_DIR.parent.parent / "nvidia_pytriton.libs"
DEFAULT_STARTUP_TIMEOUT_S = 180.0
DEFAULT_STOP_TIMEOUT_S = 30.0

SHM_DIR = Path("/dev/shm")
SERVER_UMASK = 0o077
REGION_MODE = 0o600
REGION_GUARD_INTERVAL_S = 0.01
RUN_DIR_MODE = 0o700
ADMIN_TOKEN_FILE = "admin-token"
SHM_PREFIX_FILE = "shm-prefix"
# HTTP clients send ADMIN_HEADER; tritonserver prefixes the key of gRPC restrictions itself.
ADMIN_HEADER = "ubm-admin-token"
GRPC_ADMIN_HEADER = f"triton-grpc-protocol-{ADMIN_HEADER}"
# Triton's API groups our SDK and tools never call, behind the admin token (rollout sends it).
RESTRICTED_APIS = ("shared-memory", "logging", "trace", "model-repository")
CLIENT_APIS = ("inference", "metadata", "model-config", "statistics")
"""What a client token guards; health and readiness stay open for probes."""


class ServerError(RuntimeError):
    """tritonserver failed to start, to become ready, or to stop."""


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


# --- the python backend's shared-memory regions -----------------------------------------------


def shm_prefix(grpc_port: int) -> str:
    """Name prefix of the shared-memory regions of our server on `grpc_port`, for this user.

    Only one server can listen on a port at a time, so a region with this prefix that no
    running process maps was left behind by a killed server on the same port. The trailing
    ``_`` keeps the prefix of port 800 from matching the regions of port 8001.
    """
    return f"ubm_{os.getuid()}_{grpc_port}_"


def our_regions(prefix: str, shm_dir: Path = SHM_DIR) -> list[Path]:
    """The regular files in `shm_dir` named ``<prefix>...`` and owned by this user."""
    found = []
    with contextlib.suppress(FileNotFoundError), os.scandir(shm_dir) as entries:
        for entry in entries:
            if not entry.name.startswith(prefix):
                continue
            with contextlib.suppress(FileNotFoundError):
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid():
                    found.append(Path(entry.path))
    return sorted(found)


def tighten_regions(prefix: str, shm_dir: Path = SHM_DIR) -> list[Path]:
    """Make our regions with `prefix` owner-only (0600); returns those whose mode changed."""
    tightened = []
    for path in our_regions(prefix, shm_dir):
        with contextlib.suppress(FileNotFoundError):  # the server may unlink it meanwhile
            if stat.S_IMODE(path.stat().st_mode) != REGION_MODE:
                path.chmod(REGION_MODE)
                tightened.append(path)
    return tightened


def mapped_paths(directory: Path) -> set[str]:
    """Paths under `directory` that some process we may inspect has mapped (/proc/*/maps).

    Processes of other users are not readable unless we are root; they cannot map our
    owner-only regions anyway.
    """
    needle = os.fsencode(os.path.realpath(directory)) + b"/"
    found: set[str] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            maps = Path(f"/proc/{pid}/maps").read_bytes()
        except OSError:  # exited, or another user's process
            continue
        if needle not in maps:
            continue
        for line in maps.splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith(needle):
                found.add(os.fsdecode(fields[5].removesuffix(b" (deleted)")))
    return found


def remove_stale_regions(prefix: str, shm_dir: Path = SHM_DIR) -> list[Path]:
    """Delete our regions with `prefix` that no live process maps; returns those deleted.

    Regions of another prefix, of another user, or mapped by a running server or stub are
    never touched.
    """
    regions = our_regions(prefix, shm_dir)
    if not regions:
        return []
    in_use = mapped_paths(shm_dir)
    removed = []
    for path in regions:
        if os.path.realpath(path) in in_use:
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


class RegionGuard:
    """Makes our regions with `prefix` owner-only as they appear, on a thread, until stopped.

    Use it as a context manager, or call `start` and `stop`; `stop` makes one last pass.
    """

    def __init__(self, prefix: str, shm_dir: Path = SHM_DIR) -> None:
        self.prefix, self.shm_dir = prefix, Path(shm_dir)
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._done.clear()
        self._thread = threading.Thread(target=self._run, name="ubm-shm-guard", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            tighten_regions(self.prefix, self.shm_dir)
            self._done.wait(REGION_GUARD_INTERVAL_S)

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        tighten_regions(self.prefix, self.shm_dir)

    def __enter__(self) -> RegionGuard:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def remove_stale_regions_of(workdir: Path, shm_dir: Path = SHM_DIR) -> list[Path]:
    """`remove_stale_regions` for the prefix the last server started in `workdir` used."""
    prefix_file = Path(workdir) / SHM_PREFIX_FILE
    if not prefix_file.is_file():
        return []
    prefix = prefix_file.read_text().strip()
    return remove_stale_regions(prefix, shm_dir) if prefix else []


# --- owner-only files ---------------------------------------------------------------------------


def make_owner_only_dir(directory: Path) -> None:
    """Create `directory` (and parents) and make it 0700, whatever it was before."""
    directory.mkdir(parents=True, exist_ok=True, mode=RUN_DIR_MODE)
    directory.chmod(RUN_DIR_MODE)


def restrict_tree(directory: Path) -> None:
    """Take every permission of group and others away below `directory`."""
    for path in [directory, *directory.rglob("*")]:
        if not path.is_symlink():
            path.chmod(stat.S_IMODE(path.stat().st_mode) & 0o700)


# --- the admin token ----------------------------------------------------------------------------


def write_owner_only(path: Path, text: str) -> None:
    """Replace `path` with `text`, mode 0600 from the moment it exists."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is ignored for a file left by an earlier run
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(partial, path)


def write_admin_token(workdir: Path) -> str:
    """Generate a new admin token and write it owner-only to ``<workdir>/admin-token``."""
    token = secrets.token_urlsafe(32)
    write_owner_only(Path(workdir) / ADMIN_TOKEN_FILE, token + "\n")
    return token


def read_admin_token(workdir: Path) -> str:
    """The admin token of the server last started in `workdir`."""
    return (Path(workdir) / ADMIN_TOKEN_FILE).read_text().strip()


class TritonServer:
    """A `tritonserver` process serving one model repository.

    Use as a context manager, or call `start` and `stop`. Logs go to `log_path`. `shm_dir`
    stands for /dev/shm, where the python backend's regions live (a parameter for tests).
    `tls` and `token` turn on TLS and the client token (see the module's docstring). `env`
    holds variables set over `server_environment`'s for the server and its python-backend
    stubs (e.g. a ``PATH`` whose first ``python3`` is another virtual environment's; the
    stubs run Python isolated, so ``PYTHONPATH`` and the like do not reach them).
    """

    def __init__(
        self,
        model_repository: Path,
        *,
        workdir: Path,
        ports: Ports | None = None,
        host: str = "127.0.0.1",
        verbose: bool = False,
        shm_dir: Path = SHM_DIR,
        tls: TlsSettings | None = None,
        token: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.workdir = Path(workdir).resolve()
        self.ports = ports or Ports()
        self.host = host
        self.verbose = verbose
        self.shm_dir = Path(shm_dir)
        self.tls = tls
        self._token = token
        self._env = dict(env or {})
        self.log_path = self.workdir / "tritonserver.log"
        self.admin_token_path = self.workdir / ADMIN_TOKEN_FILE
        self._process: subprocess.Popen | None = None
        self._guard = RegionGuard(shm_prefix(self.ports.grpc), self.shm_dir)

    @classmethod
    def from_settings(cls, settings: ServeSettings) -> TritonServer:
        return cls(
            settings.repository,
            workdir=settings.run_dir,
            ports=settings.ports,
            host=settings.host,
            verbose=settings.verbose,
            tls=settings.tls,
            token=settings.token,
            env={pseudonyms.KEY_FILE_ENV: str(settings.pseudonym_key_file)}
            if settings.pseudonym_key_file
            else None,
        )

    @property
    def http_host(self) -> str:
        """Triton's HTTP has no TLS: with TLS on, it listens on loopback only."""
        return "127.0.0.1" if self.tls else self.host

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports.metrics}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def shm_prefix(self) -> str:
        """Name prefix of this server's python-backend shared-memory regions."""
        return shm_prefix(self.ports.grpc)

    def command(self, admin_token: str) -> list[str]:
        """The tritonserver command line; `admin_token` unlocks the `RESTRICTED_APIS`."""
        backends = assemble_backends(self.workdir / "backends")
        restricted = [f"{','.join(RESTRICTED_APIS)}:{ADMIN_HEADER}={admin_token}"]
        if self._token:
            restricted.append(f"{','.join(CLIENT_APIS)}:{contract.TOKEN_HEADER}={self._token}")
        tls = []
        if self.tls:
            tls = [
                "--grpc-use-ssl=true",
                f"--grpc-server-cert={Path(self.tls.cert).resolve()}",
                f"--grpc-server-key={Path(self.tls.key).resolve()}",
            ]
            if self.tls.client_ca:
                tls += [
                    "--grpc-use-ssl-mutual=true",
                    f"--grpc-root-cert={Path(self.tls.client_ca).resolve()}",
                ]
        return [
            str(PYTRITON_DIR / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backends}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            "--model-control-mode=explicit",
            f"--load-model={contract.ENSEMBLE}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.ports.grpc}",
            *tls,
            *(f"--grpc-restricted-protocol={r}" for r in restricted),
            f"--http-address={self.http_host}",
            f"--http-port={self.ports.http}",
            *(f"--http-restricted-api={r}" for r in restricted),
            f"--metrics-address={self.host}",
            f"--metrics-port={self.ports.metrics}",
            "--allow-gpu-metrics=false",
            f"--log-verbose={1 if self.verbose else 0}",
            "--exit-timeout-secs=10",
        ]

    def start(self, *, detach: bool = False) -> None:
        """Start the server; `detach` lets it outlive this Python process (``make serve``).

        Removes the regions a killed server on the same gRPC port left behind, writes a new
        admin token, and starts guarding the new regions' mode until `stop` (a detached server
        is guarded until `wait_ready` returns; `rollout` guards the versions it loads).
        """
        if self._process is not None:
            raise ServerError("server already started")
        make_owner_only_dir(self.workdir)
        remove_stale_regions(self.shm_prefix, self.shm_dir)
        write_owner_only(self.workdir / SHM_PREFIX_FILE, self.shm_prefix + "\n")
        command = self.command(write_admin_token(self.workdir))
        restrict_tree(self.workdir / "backends")
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with open(log_fd, "ab") as log:
            self._process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**server_environment(), **self._env},
                start_new_session=detach,
                umask=SERVER_UMASK,
            )
        self._guard.start()

    def is_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _http_ok(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://{self.http_host}:{self.ports.http}{path}", timeout=2
            ) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(
        self, model: str = contract.ENSEMBLE, timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S
    ) -> None:
        """Block until the server and `model` are ready, with its regions owner-only.

        The python backend creates its regions while it loads the models, before the server
        is ready; later ones come with the versions a rollout loads.

        Raises:
            ServerError: the process exited or `timeout_s` passed (the message ends with
                the log's tail).
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.is_alive():
                raise ServerError(f"tritonserver exited during start-up\n{self.log_tail()}")
            if self._http_ok("/v2/health/ready") and self._http_ok(f"/v2/models/{model}/ready"):
                tighten_regions(self.shm_prefix, self.shm_dir)
                return
            time.sleep(0.25)
        raise ServerError(f"model {model!r} not ready after {timeout_s:.0f} s\n{self.log_tail()}")

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Ask the server to shut down (SIGINT), and kill it if it has not within `timeout_s`.

        Then removes the regions of our prefix that no process maps any more (tritonserver
        removes its own on a clean exit; after a kill they would stay).
        """
        if self._process is None:
            return
        stop_process(self._process.pid, timeout_s, self._process)
        self._process = None
        self._guard.stop()
        remove_stale_regions(self.shm_prefix, self.shm_dir)

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
    stat_file = Path(f"/proc/{pid}/stat")
    return not (stat_file.exists() and stat_file.read_text().rsplit(")", 1)[-1].split()[0] == "Z")


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
