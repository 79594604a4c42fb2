"""`ubm-serve`: run Triton on a model repository and switch its versions, nothing else.

The commands a serving image needs (`serve`, `health`, `rollout`, `rollback`, `stop`), kept apart
from `ubm-build` so that they import neither PyTorch nor the exporters: the CPU image installs
only the serving dependencies. `ubm-build` offers the same commands.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import click
from tritonclient.utils import InferenceServerException

from ubm import contract, pseudonyms
from ubm.config import TlsConfig, channel_options
from ubm_build import options
from ubm_build.serving import rollout, server, versions
from ubm_build.serving import settings as settings_module

PID_FILE = "tritonserver.pid"


def _echo(message: str) -> None:
    context = click.get_current_context(silent=True)
    program = context.find_root().info_name if context else "ubm-serve"
    click.echo(click.style(program or "ubm-serve", bold=True) + " " + message, err=True)


@click.group()
def main() -> None:
    """Run tritonserver on a ubm model repository and switch the versions it serves."""


_file = click.Path(exists=True, dir_okay=False, path_type=Path)


@main.command("serve")
@click.option(
    "--config",
    "config_file",
    type=_file,
    help="TOML file of these settings (see README, Operations); options given here override it.",
)
@options.repository()
@options.run_dir()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; 0.0.0.0 exposes the server to other machines.",
)
@click.option("--tls-cert", type=_file, help="PEM certificate of the server: gRPC over TLS.")
@click.option("--tls-key", type=_file, help="PEM private key of --tls-cert.")
@click.option(
    "--tls-client-ca",
    type=_file,
    help="PEM CA certificate(s): clients need a certificate signed by one (mutual TLS).",
)
@click.option(
    "--token-file",
    type=_file,
    help=f"File holding the token clients must send (else ${contract.TOKEN_ENV}, if set).",
)
@click.option(
    "--pseudonym-key-file",
    type=_file,
    help="The key a model built on pseudonymised ids needs (a file others cannot read; else"
    f" ${pseudonyms.KEY_FILE_ENV}, if set). Never put it in the model repository.",
)
@click.option("--detach", is_flag=True, help="Return once ready and leave the server running.")
@click.option(
    "--timeout",
    "startup_timeout_s",
    type=float,
    default=server.DEFAULT_STARTUP_TIMEOUT_S,
    show_default=True,
    help="Seconds to wait for the ensemble to become ready.",
)
@click.pass_context
def serve_command(ctx: click.Context, config_file: Path | None, detach: bool, **given) -> None:
    """Start tritonserver on the repository.

    Ports come from UBM_GRPC_PORT, UBM_HTTP_PORT and UBM_METRICS_PORT (8001/8000/8002) or the
    config file.
    """
    try:
        values = settings_module.read_config_file(config_file) if config_file else {}
        for name, value in given.items():
            key = {"repository_dir": "repository"}.get(name, name)
            given_here = ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
            if given_here or key not in values:
                values[key] = value
        settings = settings_module.build_settings(values)
    except settings_module.SettingsError as e:
        raise click.UsageError(str(e)) from e
    pid_file = settings.run_dir / PID_FILE
    if pid_file.exists() and server.process_alive(int(pid_file.read_text())):
        raise click.ClickException(
            f"a server is already running (pid {pid_file.read_text()}); stop it with `make stop`"
        )
    for key, value in settings.describe().items():
        _echo(f"{key}: {value}")
    triton = server.TritonServer.from_settings(settings)
    triton.start(detach=detach)
    server.write_owner_only(pid_file, str(triton.pid))
    try:
        triton.wait_ready(timeout_s=settings.startup_timeout_s)
    except server.ServerError as e:
        triton.stop()
        pid_file.unlink(missing_ok=True)
        raise click.ClickException(str(e)) from e
    _echo(f"Triton ready (log: {triton.log_path})")
    _echo(
        f"{', '.join(server.RESTRICTED_APIS)} APIs need the token in {triton.admin_token_path}"
        f" (header {server.ADMIN_HEADER} over HTTP, {server.GRPC_ADMIN_HEADER} over gRPC)"
    )
    if detach:
        return
    # In a container this process is PID 1, which ignores SIGTERM unless it handles it: Kubernetes
    # and `docker stop` send it, and Triton then finishes its in-flight requests and exits.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while triton.is_alive():
            time.sleep(0.5)
        _echo(f"tritonserver exited on its own\n{triton.log_tail()}")
        status = 1
    except KeyboardInterrupt:
        status = 0
    finally:
        triton.stop()
        pid_file.unlink(missing_ok=True)
    sys.exit(status)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@main.command("health")
@click.option("--live", is_flag=True, help="Ask whether the server is live, not ready.")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address of the server's HTTP port."
)
@click.option("--timeout", default=2.0, show_default=True, help="Seconds to wait for an answer.")
def health_command(live: bool, host: str, timeout: float) -> None:
    """Exit 0 when the server on $UBM_HTTP_PORT is ready (or live), 1 otherwise.

    The container health check and, with TLS (whose HTTP port listens on loopback only), the
    Kubernetes probes.
    """
    try:
        port = server.Ports.from_env().http
    except settings_module.SettingsError as e:
        raise click.UsageError(str(e)) from e
    url = f"http://{host}:{port}/v2/health/{'live' if live else 'ready'}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            healthy = response.status == 200
    except (urllib.error.URLError, OSError) as e:
        _echo(f"{url}: {e}")
        healthy = False
    sys.exit(0 if healthy else 1)


def rollout_options(command):
    """The options `rollout` and `rollback` share: where the server and its repository are."""
    shared = [
        options.repository(help_text="The server's model repository."),
        options.run_dir(),
        click.option(
            "--url",
            default=lambda: f"localhost:{server.Ports.from_env().grpc}",
            show_default="localhost:$UBM_GRPC_PORT",
            help="The server's gRPC address.",
        ),
        click.option("--to", "version", type=click.IntRange(1), help="The version to serve."),
        click.option("--root-cert", type=_file, help="PEM CA of the server's TLS certificate."),
        click.option("--client-cert", type=_file, help="PEM client certificate (mutual TLS)."),
        click.option("--client-key", type=_file, help="PEM client key (mutual TLS)."),
        click.option(
            "--token-file",
            type=_file,
            help=f"The server's client token (else ${contract.TOKEN_ENV}, if set).",
        ),
        click.option(
            "--canary-atol",
            default=rollout.DEFAULT_CANARY_ATOL,
            show_default=True,
            help="Largest tolerated |served - built| probability on a canary record.",
        ),
    ]
    for option in reversed(shared):
        command = option(command)
    return command


class FatalError(click.ClickException):
    """An error that stops a command with exit status 2."""

    exit_code = 2


def _switch(
    *,
    rollback: bool,
    repository_dir: Path,
    run_dir: Path,
    url: str,
    version: int | None,
    canary_atol: float,
    root_cert: Path | None,
    client_cert: Path | None,
    client_key: Path | None,
    token_file: Path | None,
) -> None:
    """Run one switch; exit 1 when the canary failed, 2 when the switch could not be made."""
    command = "rollback" if rollback else "rollout"
    if not (run_dir / server.ADMIN_TOKEN_FILE).is_file():
        raise FatalError(f"no admin token in {run_dir}: pass the --run-dir of the running server")
    try:
        token = settings_module.read_token(token_file) if token_file else None
    except settings_module.SettingsError as e:
        raise FatalError(str(e)) from e
    tls = None
    if root_cert or client_cert or client_key:
        tls = TlsConfig(
            root_certificates=root_cert, certificate_chain=client_cert, private_key=client_key
        )
    connection = rollout.Connection(
        url,
        server.read_admin_token(run_dir),
        token or os.environ.get(contract.TOKEN_ENV) or None,
        channel_options(tls),
    )
    prefix_file = run_dir / server.SHM_PREFIX_FILE
    switch = rollout.Switch(
        repository_dir,
        connection,
        _echo,
        canary_atol=canary_atol,
        shm_prefix=prefix_file.read_text().strip() if prefix_file.is_file() else None,
    )
    try:
        if version is None:
            newest = versions.versions(repository_dir)[-1]
            version = switch.previous_version() if rollback else newest
        report = switch.to(version)
    except rollout.CanaryError as e:
        _echo(f"{command} stopped, the old version still serves: {e}")
        sys.exit(1)
    except (rollout.RolloutError, InferenceServerException, IndexError) as e:
        raise FatalError(f"{command} failed: {e}") from e
    finally:
        switch.close()
    if report is not None:
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items())
        _echo(f"serving version {report.to_version} (was {report.from_version}): {phases}")


@main.command("rollout")
@rollout_options
def rollout_command(**arguments) -> None:
    """Switch the running server to the newest version in the repository (or --to N),
    after a canary check, without dropping a request.

    \b
    Exit status: 0 switched (or served already), 1 the canary failed and the old version
    still serves, 2 the switch could not be made.
    """
    _switch(rollback=False, **arguments)


@main.command("rollback")
@rollout_options
def rollback_command(**arguments) -> None:
    """Switch the running server back to the version before the served one (or --to N).

    \b
    Exit status as for rollout.
    """
    _switch(rollback=True, **arguments)


@main.command("stop")
@options.run_dir()
def stop_command(run_dir: Path) -> None:
    """Stop the server that `serve --detach` started, and remove its stale shared memory."""
    pid_file = run_dir / PID_FILE
    if pid_file.exists():
        pid = int(pid_file.read_text())
        server.stop_process(pid, server.DEFAULT_STOP_TIMEOUT_S)
        pid_file.unlink()
        _echo(f"server (pid {pid}) stopped")
    else:
        _echo("no server running")
    removed = server.remove_stale_regions_of(run_dir)
    if removed:
        _echo(f"removed {len(removed)} stale shared-memory region(s) of the server")
