"""`ubm-build serve`'s one configuration: file, environment and options, echoed without secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from ubm import contract
from ubm_build.serving import server
from ubm_build.serving.settings import (
    Ports,
    SettingsError,
    build_settings,
    read_config_file,
)

TOKEN = "a-token-that-is-long-enough-1234"


def required(tmp_path: Path) -> dict:
    return {"repository": tmp_path / "repo", "run_dir": tmp_path / "run"}


def test_a_config_file_reads_paths_relative_to_itself(tmp_path):
    (tmp_path / "conf").mkdir()
    config = tmp_path / "conf" / "serve.toml"
    config.write_text(
        'repository = "../repo"\nrun_dir = "run"\nhost = "0.0.0.0"\ngrpc_port = 9001\n'
    )
    values = read_config_file(config)
    assert values["repository"] == tmp_path / "conf" / ".." / "repo"
    assert values["run_dir"] == tmp_path / "conf" / "run"
    settings = build_settings(values, environ={})
    assert settings.host == "0.0.0.0" and settings.ports.grpc == 9001


def test_an_unknown_key_is_refused_with_the_known_ones(tmp_path):
    config = tmp_path / "serve.toml"
    config.write_text('tls_certificate = "x"\n')
    with pytest.raises(SettingsError, match=r"unknown setting.*tls_certificate.*tls_cert"):
        read_config_file(config)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('grpc_port = "8001"', "grpc_port must be an integer"),
        ("grpc_port = 70000", "grpc_port must be from 1 to 65535"),
        ("tls_cert = 5", "tls_cert must be a string"),
        ("verbose = 1", "verbose must be true or false"),
        ("startup_timeout_s = true", "startup_timeout_s must be an integer or a number"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_with_its_key(tmp_path, line, message):
    config = tmp_path / "serve.toml"
    config.write_text(line + "\n")
    with pytest.raises(SettingsError, match=message):
        read_config_file(config)


def test_the_token_comes_from_its_file_or_the_environment_and_is_never_echoed(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    from_file = build_settings({**required(tmp_path), "token_file": token_file}, environ={})
    from_env = build_settings(required(tmp_path), environ={contract.TOKEN_ENV: TOKEN})
    assert from_file.token == from_env.token == TOKEN
    for settings in (from_file, from_env):
        assert TOKEN not in str(settings.describe()) and TOKEN not in repr(settings)
    assert from_file.describe()["token"] == f"required (from file {token_file})"
    assert build_settings(required(tmp_path), environ={}).describe()["token"] == "off"


@pytest.mark.parametrize("token", ["short", "has a space in it somewhere", "ünicode-token-1234567"])
def test_a_weak_or_unsendable_token_is_refused(tmp_path, token):
    with pytest.raises(SettingsError, match="token"):
        build_settings(required(tmp_path), environ={contract.TOKEN_ENV: token})


def test_tls_needs_a_certificate_and_its_key_and_moves_http_to_loopback(tmp_path):
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    cert.write_text("cert")
    key.write_text("key")
    with pytest.raises(SettingsError, match="tls_cert and tls_key"):
        build_settings({**required(tmp_path), "tls_cert": cert}, environ={})
    settings = build_settings(
        {**required(tmp_path), "tls_cert": cert, "tls_key": key, "host": "0.0.0.0"}, environ={}
    )
    assert settings.http_host == "127.0.0.1"
    assert settings.describe()["tls"] == {"cert": str(cert), "key": str(key), "client_ca": None}
    triton = server.TritonServer.from_settings(settings)
    assert triton.http_host == "127.0.0.1" and triton.host == "0.0.0.0"


def test_a_missing_certificate_file_is_named(tmp_path):
    with pytest.raises(SettingsError, match="no such file"):
        build_settings(
            {**required(tmp_path), "tls_cert": tmp_path / "x", "tls_key": tmp_path / "y"},
            environ={},
        )


def test_ports_default_to_the_contract(tmp_path):
    assert build_settings(required(tmp_path), environ={}).ports == Ports()


@pytest.mark.parametrize("value", ["", "x", "0", "70000", "80 01"])
def test_a_port_variable_that_is_not_a_port_is_refused_by_name(value):
    with pytest.raises(SettingsError, match=f"UBM_HTTP_PORT={value!r} is not a port number"):
        Ports.from_env({"UBM_HTTP_PORT": value})


def test_unset_port_variables_take_the_defaults():
    assert Ports.from_env({"UBM_GRPC_PORT": "9001"}) == Ports(grpc=9001)
