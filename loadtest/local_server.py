"""A tritonserver for one load test: free localhost ports, started and stopped around it.

Free ports (not UBM_*_PORT) so that a load test never collides with a server that
``make serve`` left running.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ubm_build.serving.server import Ports, TritonServer


@contextmanager
def local_server(
    repository: Path, workdir: Path, log: Callable[[str], None] = print
) -> Iterator[str]:
    """Serve `repository` on free localhost ports; yields the gRPC address ``host:port``."""
    if not (Path(repository) / "ubm" / "config.pbtxt").is_file():
        raise SystemExit(f"{repository} holds no ubm ensemble: run `make model` first")
    ports = Ports.free()
    server = TritonServer(repository, workdir=workdir, ports=ports)
    log(f"starting tritonserver on {repository} (log: {server.log_path})")
    with server:
        log(f"tritonserver ready at {server.grpc_url}")
        yield server.grpc_url
    log("tritonserver stopped")
