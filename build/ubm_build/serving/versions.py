"""Versions in a model repository: every build adds one, rollout and rollback switch between them.

Each build writes version N of all four models (the ensemble and its steps) and pins N in their
configs, so a server started on the repository serves N. What a rollout needs to switch a running
server to N without a restart sits next to the ensemble's version directory::

    ubm/config.pbtxt          version_policy {specific {versions: N}}, steps pinned to N,
                              the build's metadata as parameters (`ubm-client info` shows them)
    ubm/N/build.json          the build's metadata, the four configs, the canary's expected scores
    ubm/N/canary.jsonl        the canary records
    preprocess/N/ ...         the steps' files of build N

Triton keeps one config per model, shared by all its loaded versions, so two builds can be
served side by side (during a rollout) only when their step configs are the same apart from the
version policy: `incompatibilities` says where they differ.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from ubm import contract

MODELS = (contract.ENSEMBLE, contract.PREPROCESS, contract.ENCODER, contract.HEAD)
STEPS = (contract.PREPROCESS, contract.ENCODER, contract.HEAD)
BUILD_FILE = "build.json"
CANARY_FILE = "canary.jsonl"
VERSIONS_KEPT = 3
"""Versions a build keeps on disk (its own included): enough to roll back twice."""


def to_pbtxt(config: dict) -> str:
    """Validate `config` against Triton's ModelConfig schema and render it as config.pbtxt."""
    message = json_format.ParseDict(config, model_config_pb2.ModelConfig())
    return text_format.MessageToString(message)


def read_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(Path(path).read_text(), model_config_pb2.ModelConfig())


def versions(repository_dir: Path, model: str = contract.ENSEMBLE) -> list[int]:
    """The version numbers `model` has on disk, oldest first."""
    model_dir = Path(repository_dir) / model
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(repository_dir: Path) -> int:
    """One more than the newest version of any model (1 for an empty repository)."""
    return 1 + max((v for m in MODELS for v in versions(repository_dir, m)), default=0)


def pinned_version(repository_dir: Path) -> int | None:
    """The version a server started on the repository serves: the ensemble config's pin."""
    path = Path(repository_dir) / contract.ENSEMBLE / "config.pbtxt"
    if not path.is_file():
        return None
    pinned = read_config(path).version_policy.specific.versions
    return int(pinned[0]) if pinned else None


def version_dir(repository_dir: Path, model: str, version: int | None = None) -> Path:
    """``<repository>/<model>/<version>``; by default the pinned version."""
    version = version if version is not None else pinned_version(repository_dir)
    if version is None:
        raise FileNotFoundError(f"{repository_dir} pins no version of {contract.ENSEMBLE}")
    return Path(repository_dir) / model / str(version)


@dataclass(frozen=True)
class Build:
    """What one build wrote: its version, metadata, configs and the canary's expected scores."""

    version: int
    metadata: dict[str, str]
    configs: dict[str, dict[str, Any]]
    """The four model configs, as dicts that `to_pbtxt` takes."""
    canary_probabilities: list[float]
    """The build's own purchase probabilities of the canary records (ONNX Runtime in-process)."""

    def write(self, repository_dir: Path, canary_records: list[dict]) -> None:
        directory = version_dir(repository_dir, contract.ENSEMBLE, self.version)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / BUILD_FILE).write_text(json.dumps(asdict(self), indent=2))
        (directory / CANARY_FILE).write_text(
            "".join(json.dumps(record) + "\n" for record in canary_records)
        )

    @classmethod
    def read(cls, repository_dir: Path, version: int) -> Build:
        """Raises FileNotFoundError: the version has no build record."""
        path = version_dir(repository_dir, contract.ENSEMBLE, version) / BUILD_FILE
        return cls(**json.loads(path.read_text()))

    def canary_atol(self, default: float) -> float:
        """How far served canary scores may lie from the expected ones: `default`, or the
        looser bound a GPU build records (``canary_atol``: its expected scores come from the
        fp32 graph on the CPU)."""
        return max(default, float(self.metadata.get("canary_atol", 0.0)))

    def canary_records(self, repository_dir: Path) -> list[dict]:
        path = version_dir(repository_dir, contract.ENSEMBLE, self.version) / CANARY_FILE
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pin(repository_dir: Path, build: Build) -> None:
    """Rewrite the four configs so that a server started on the repository serves `build`."""
    for model, config in build.configs.items():
        path = Path(repository_dir) / model / "config.pbtxt"
        partial = path.with_name(".config.pbtxt.partial")
        partial.write_text(to_pbtxt(config))
        partial.replace(path)


def prune(repository_dir: Path, keep: int = VERSIONS_KEPT) -> list[int]:
    """Delete all but the newest `keep` versions of every model; returns the deleted ones.

    The pinned version is always kept.
    """
    pinned = pinned_version(repository_dir)
    kept = set(versions(repository_dir)[-keep:]) | {pinned}
    deleted = set()
    for model in MODELS:
        for version in versions(repository_dir, model):
            if version not in kept:
                shutil.rmtree(version_dir(repository_dir, model, version))
                deleted.add(version)
    return sorted(deleted)


def string_parameters(values: Mapping[str, object]) -> dict[str, dict[str, str]]:
    """Config ``parameters`` holding `values` as strings."""
    return {key: {"string_value": str(value)} for key, value in values.items()}


def renumbered(
    configs: dict[str, dict[str, Any]], version: int, metadata: dict[str, str]
) -> dict[str, dict[str, Any]]:
    """A build's four configs made to serve `version` (policies and ensemble steps pinned to
    it), with `metadata` as the ensemble's parameters."""
    out = {model: with_versions(config, [version]) for model, config in configs.items()}
    ensemble = out[contract.ENSEMBLE]
    steps = ensemble["ensemble_scheduling"]["step"]
    ensemble["ensemble_scheduling"] = {
        **ensemble["ensemble_scheduling"],
        "step": [{**step, "model_version": version} for step in steps],
    }
    ensemble["parameters"] = string_parameters(metadata)
    return out


def with_versions(config: dict[str, Any], loaded: list[int]) -> dict[str, Any]:
    """`config` with its version policy set to serve exactly the `loaded` versions."""
    return {**config, "version_policy": {"specific": {"versions": sorted(loaded)}}}


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A step config without what differs between builds by design."""
    return {k: v for k, v in config.items() if k != "version_policy"}


def incompatibilities(live: Build, new: Build) -> list[str]:
    """The steps whose configs differ between two builds (besides the version policy).

    Triton loads all versions of a model with one config, so a rollout between two builds
    needs the same step configs; an empty list means it can go ahead.
    """
    return [
        model
        for model in STEPS
        if _comparable(live.configs[model]) != _comparable(new.configs[model])
    ]
