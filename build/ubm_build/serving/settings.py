"""One configuration of `ubm-build serve`: ports, TLS, token, pseudonym key, time limits.

Values come from a TOML file (``--config``), then from the environment (ports, ``UBM_TOKEN``),
then from the command line, each overriding the one before. `ServeSettings.describe` is what
``serve`` prints at start-up: every setting, no secret.

A config file::

    host = "0.0.0.0"
    grpc_port = 8001
    http_port = 8000
    metrics_port = 8002
    tls_cert = "/etc/ubm/server.crt"
    tls_key = "/etc/ubm/server.key"
    tls_client_ca = "/etc/ubm/clients-ca.crt"   # mutual TLS: clients need a certificate
    token_file = "/etc/ubm/token"              # clients must send this token
    pseudonym_key_file = "/etc/ubm/pseudonym-key"  # for a model built on pseudonymised ids
    startup_timeout_s = 180

Relative paths in the file are relative to the file.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import tomllib

from ubm import contract, pseudonyms

TOKEN_ENV = contract.TOKEN_ENV
MIN_TOKEN_CHARS = 16
"""A shorter token is refused: it could be guessed."""


class SettingsError(ValueError):
    """A setting is missing, unknown or unusable; the message names it."""


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
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Ports:
        """Ports from UBM_GRPC_PORT, UBM_HTTP_PORT, UBM_METRICS_PORT (default 8001/8000/8002).

        Raises:
            SettingsError: a variable is set but not a port number (1 to 65535).
        """
        environ = os.environ if environ is None else environ
        defaults = cls()
        ports = {}
        for name in ("grpc", "http", "metrics"):
            variable = f"UBM_{name.upper()}_PORT"
            text = environ.get(variable)
            if text is None:
                ports[name] = getattr(defaults, name)
                continue
            if not (text.strip().isdigit() and 1 <= int(text) <= 65535):
                raise SettingsError(f"{variable}={text!r} is not a port number (1 to 65535)")
            ports[name] = int(text)
        return cls(**ports)


def free_port() -> int:
    """A localhost TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True, kw_only=True)
class TlsSettings:
    """The server's certificate and key (PEM); with `client_ca`, clients need a certificate
    signed by it (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def __post_init__(self) -> None:
        for name in ("cert", "key", "client_ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise SettingsError(f"tls {name}: no such file: {path}")


def read_token(path: Path) -> str:
    """The token in `path` (surrounding whitespace dropped).

    Raises:
        SettingsError: unreadable, or shorter than `MIN_TOKEN_CHARS`.
    """
    try:
        token = Path(path).read_text().strip()
    except OSError as e:
        raise SettingsError(f"token file {path}: {e.strerror}") from e
    return check_token(token, f"token file {path}")


def check_token(token: str, source: str) -> str:
    """`token` when it is long enough and fits in an HTTP/2 header, else SettingsError."""
    if len(token) < MIN_TOKEN_CHARS:
        raise SettingsError(f"{source}: the token must have {MIN_TOKEN_CHARS} characters or more")
    if not token.isascii() or not token.isprintable() or " " in token:
        raise SettingsError(f"{source}: the token must be printable ASCII without spaces")
    return token


@dataclass(frozen=True, kw_only=True)
class ServeSettings:
    """Everything `ubm-build serve` starts tritonserver with."""

    repository: Path
    run_dir: Path
    host: str = "127.0.0.1"
    ports: Ports = field(default_factory=Ports)
    tls: TlsSettings | None = None
    token: str | None = field(default=None, repr=False)
    token_source: str | None = None
    """Where the token came from ("file PATH" or "UBM_TOKEN"), for `describe`."""
    pseudonym_key_file: Path | None = None
    """The key file ``preprocess`` reads (`ubm.pseudonyms`), checked when the settings are
    built; the server finds it through `pseudonyms.KEY_FILE_ENV`."""
    startup_timeout_s: float = 180.0
    verbose: bool = False

    @property
    def http_host(self) -> str:
        """Triton's HTTP endpoint has no TLS: with TLS on, it listens on loopback only."""
        return "127.0.0.1" if self.tls else self.host

    def describe(self) -> dict[str, Any]:
        """The settings as printed at start-up: paths and ports, never the token itself."""
        described = {
            "repository": str(self.repository),
            "run_dir": str(self.run_dir),
            "grpc": f"{self.host}:{self.ports.grpc}",
            "http": f"{self.http_host}:{self.ports.http}",
            "metrics": f"{self.host}:{self.ports.metrics}",
            "tls": "off"
            if self.tls is None
            else {k: None if v is None else str(v) for k, v in asdict(self.tls).items()},
            "token": f"required (from {self.token_source})" if self.token else "off",
            "pseudonym_key_file": str(self.pseudonym_key_file)
            if self.pseudonym_key_file
            else "none",
            "model_control": "explicit",
            "startup_timeout_s": self.startup_timeout_s,
        }
        return described


FILE_KEYS: dict[str, type | tuple[type, ...]] = {
    "repository": str,
    "run_dir": str,
    "host": str,
    "grpc_port": int,
    "http_port": int,
    "metrics_port": int,
    "tls_cert": str,
    "tls_key": str,
    "tls_client_ca": str,
    "token_file": str,
    "pseudonym_key_file": str,
    "startup_timeout_s": (int, float),
    "verbose": bool,
}
"""The settings a config file may hold, with the TOML type each takes."""
PATH_KEYS = {
    "repository",
    "run_dir",
    "tls_cert",
    "tls_key",
    "tls_client_ca",
    "token_file",
    "pseudonym_key_file",
}
PORT_KEYS = {"grpc_port", "http_port", "metrics_port"}
TOML_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings in a TOML file, with relative paths made relative to the file.

    Raises:
        SettingsError: not TOML, a key this version does not know, a value of the wrong type,
            or a port outside 1 to 65535.
    """
    try:
        values = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise SettingsError(f"config file {path}: {e}") from e
    unknown = sorted(set(values) - set(FILE_KEYS))
    if unknown:
        raise SettingsError(
            f"config file {path}: unknown setting(s) {', '.join(unknown)};"
            f" known: {', '.join(sorted(FILE_KEYS))}"
        )
    for key, value in values.items():
        expected = FILE_KEYS[key]
        wrong_bool = isinstance(value, bool) and expected is not bool
        if wrong_bool or not isinstance(value, expected):
            kinds = expected if isinstance(expected, tuple) else (expected,)
            names = " or ".join(TOML_TYPE_NAMES[kind] for kind in kinds)
            raise SettingsError(f"config file {path}: {key} must be {names}")
        if key in PORT_KEYS and not 1 <= value <= 65535:
            raise SettingsError(f"config file {path}: {key} must be from 1 to 65535")
    base = Path(path).resolve().parent
    return {k: base / v if k in PATH_KEYS else v for k, v in values.items()}


def build_settings(
    values: dict[str, Any], environ: Mapping[str, str] | None = None
) -> ServeSettings:
    """`ServeSettings` from flat values (config file keys, later ones already merged in).

    The token comes from ``token_file``, else from the `TOKEN_ENV` environment variable; the
    pseudonym key file likewise from ``pseudonym_key_file``, else `pseudonyms.KEY_FILE_ENV`.
    Ports not given come from UBM_GRPC_PORT etc. (see `Ports.from_env`).

    Raises:
        SettingsError: a setting is missing or unusable.
    """
    environ = os.environ if environ is None else environ
    for required in ("repository", "run_dir"):
        if values.get(required) is None:
            raise SettingsError(f"{required} is required")
    env_ports = Ports.from_env(environ)
    ports = Ports(
        grpc=values.get("grpc_port") or env_ports.grpc,
        http=values.get("http_port") or env_ports.http,
        metrics=values.get("metrics_port") or env_ports.metrics,
    )
    tls = None
    cert, key, client_ca = (values.get(k) for k in ("tls_cert", "tls_key", "tls_client_ca"))
    if cert or key or client_ca:
        if not (cert and key):
            raise SettingsError("TLS needs both tls_cert and tls_key (--tls-cert, --tls-key)")
        tls = TlsSettings(cert=Path(cert), key=Path(key), client_ca=client_ca and Path(client_ca))
    token, source = None, None
    if values.get("token_file"):
        token, source = read_token(values["token_file"]), f"file {values['token_file']}"
    elif environ.get(TOKEN_ENV):
        token, source = check_token(environ[TOKEN_ENV], TOKEN_ENV), TOKEN_ENV
    key_file = values.get("pseudonym_key_file") or environ.get(pseudonyms.KEY_FILE_ENV)
    if key_file:
        try:
            pseudonyms.read_key(key_file)
        except pseudonyms.PseudonymKeyError as e:
            raise SettingsError(str(e)) from e
    settings = ServeSettings(
        repository=Path(values["repository"]),
        run_dir=Path(values["run_dir"]),
        ports=ports,
        tls=tls,
        token=token,
        token_source=source,
        pseudonym_key_file=Path(key_file).resolve() if key_file else None,
    )
    overrides = {
        f.name: values[f.name]
        for f in fields(ServeSettings)
        if f.name in ("host", "startup_timeout_s", "verbose") and values.get(f.name) is not None
    }
    return replace(settings, **overrides)
