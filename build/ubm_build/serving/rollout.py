"""Switch a running server from one version of the repository to another without a restart.

A switch to version ``new`` from the served version ``old`` (Triton's model-control API, with the
server's admin token):

1. load ``new`` of each step next to ``old`` (Triton warms them up: `warmup`);
2. canary: score the build's canary records through the ``new`` steps, chained here step by step,
   and compare with the build's own scores; a mismatch unloads ``new`` and stops;
3. switch: reload the ensemble pinned to ``new`` (Triton swaps it in once loaded, so requests in
   flight finish on ``old`` and later ones go to ``new``);
4. score the canary through the ensemble, then unload ``old`` and pin ``new`` on disk, so a
   restarted server serves it too.

If any step fails, the server is switched back to ``old`` alone. Rollback is the same switch
to an older version still on disk. A request that arrives while the
ensemble is swapped may be answered NOT_FOUND; the SDK retries it.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tritonclient.grpc import InferenceServerClient, InferInput, InferRequestedOutput

from ubm import contract
from ubm._base import build_inputs
from ubm.records import parse_record
from ubm_build.serving import server, versions

DEFAULT_CANARY_ATOL = 1e-4
"""Largest tolerated |served probability - the build's own| on a canary record."""
LOAD_TIMEOUT_S = 600.0
"""Longest wait for one model-control call (loading python-backend models takes seconds)."""


class RolloutError(RuntimeError):
    """The switch could not be made; the server still serves the version it served before."""


class CanaryError(RolloutError):
    """The new version's canary scores differ from its build's; it was unloaded again."""


@dataclass(frozen=True)
class Connection:
    """How to reach the server: its gRPC address, TLS options and the tokens."""

    url: str
    admin_token: str
    client_token: str | None = None
    channel: dict | None = None
    """Keyword arguments of `InferenceServerClient`, e.g. `ubm.config.channel_options`."""

    def client(self) -> InferenceServerClient:
        return InferenceServerClient(self.url, **(self.channel or {}))

    @property
    def headers(self) -> dict[str, str]:
        headers = {server.GRPC_ADMIN_HEADER: self.admin_token}
        if self.client_token:
            headers[contract.GRPC_TOKEN_HEADER] = self.client_token
        return headers


@dataclass(frozen=True)
class Report:
    """What a switch did."""

    from_version: int
    to_version: int
    canary_max_abs_diff: float
    seconds: dict[str, float]


class Switch:
    """Switches the server at `connection` between versions of `repository_dir`.

    Args:
        repository_dir: the server's model repository.
        connection: the server.
        log: receives one line per phase.
        canary_atol: see `DEFAULT_CANARY_ATOL`.
        shm_prefix: the server's shared-memory prefix when it runs on this host: the regions of
            the versions loaded here are made owner-only as they appear.
    """

    def __init__(
        self,
        repository_dir: Path,
        connection: Connection,
        log: Callable[[str], None] = print,
        *,
        canary_atol: float = DEFAULT_CANARY_ATOL,
        shm_prefix: str | None = None,
    ) -> None:
        self.repository_dir = Path(repository_dir)
        self.connection = connection
        self.log = log
        self.canary_atol = canary_atol
        self.shm_prefix = shm_prefix
        self._triton = connection.client()

    def close(self) -> None:
        self._triton.close()

    def served_version(self) -> int:
        """The version of the ensemble the server serves now."""
        index = self._triton.get_model_repository_index(
            headers=self.connection.headers, as_json=True
        )
        ready = [
            int(m["version"])
            for m in index.get("models", [])
            if m["name"] == contract.ENSEMBLE and m.get("state") == "READY"
        ]
        if not ready:
            raise RolloutError(f"the server at {self.connection.url} serves no {contract.ENSEMBLE}")
        return max(ready)

    def previous_version(self) -> int:
        """The newest version on disk older than the served one (what a rollback goes to)."""
        served = self.served_version()
        older = [v for v in versions.versions(self.repository_dir) if v < served]
        if not older:
            raise RolloutError(f"no version older than {served} in {self.repository_dir}")
        return older[-1]

    def to(self, version: int) -> Report | None:
        """Switch to `version`; None when it is served already.

        Raises:
            CanaryError: the canary failed; `version` was unloaded, the old one still serves.
            RolloutError: `version` cannot be served next to the old one, or a step failed.
        """
        old = self.served_version()
        if version == old:
            self.log(f"version {version} is served already")
            return None
        try:
            new_build = versions.Build.read(self.repository_dir, version)
            old_build = versions.Build.read(self.repository_dir, old)
        except FileNotFoundError as e:
            raise RolloutError(f"no build record: {e.filename}") from e
        differing = versions.incompatibilities(old_build, new_build)
        if differing:
            raise RolloutError(
                f"versions {old} and {version} differ in the configs of {', '.join(differing)};"
                " Triton serves all versions of a model with one config, so this change needs"
                " a restart on the new repository (ubm-build serve)"
            )
        seconds: dict[str, float] = {}
        guard = server.RegionGuard(self.shm_prefix) if self.shm_prefix else contextlib.nullcontext()
        with guard:
            try:
                with _timed(seconds, "load"):
                    self.log(f"loading version {version} of the steps next to {old}")
                    self._load_steps(new_build, [old, version])
                with _timed(seconds, "canary"):
                    diff = self._check_canary(new_build, self._score_steps)
                self.log(f"canary on the steps of {version}: max |p - build's| {diff:.2e}")
            except Exception:
                self._revert(old_build, switched=False)
                raise
            try:
                with _timed(seconds, "switch"):
                    self._load(new_build.configs[contract.ENSEMBLE])
                self.log(f"ensemble switched to version {version}")
                with _timed(seconds, "verify"):
                    diff = max(diff, self._check_canary(new_build, self._score_ensemble))
            except Exception:
                self._revert(old_build, switched=True)
                raise
            with _timed(seconds, "unload"):
                self._load_steps(new_build, [version])
            self.log(f"version {old} unloaded")
        versions.pin(self.repository_dir, new_build)
        return Report(old, version, diff, {k: round(v, 2) for k, v in seconds.items()})

    def _revert(self, old_build: versions.Build, *, switched: bool) -> None:
        """Serve `old_build` alone again after a failed switch (best effort, logged)."""
        self.log(f"switching back to version {old_build.version}")
        try:
            if switched:
                self._load(old_build.configs[contract.ENSEMBLE])
            self._load_steps(old_build, [old_build.version])
        except Exception as e:  # the original failure is the one to report
            self.log(f"could not switch back cleanly: {e}")

    def _load(self, config: dict) -> None:
        self._triton.load_model(
            config["name"],
            config=json.dumps(config),
            headers=self.connection.headers,
            client_timeout=LOAD_TIMEOUT_S,
        )

    def _load_steps(self, build: versions.Build, loaded: list[int]) -> None:
        for model in versions.STEPS:
            self._load(versions.with_versions(build.configs[model], loaded))

    def _check_canary(self, build: versions.Build, score: Callable) -> float:
        records = build.canary_records(self.repository_dir)
        if not records:
            self.log(f"version {build.version} has no canary records: not checked")
            return 0.0
        served = score(records, build.version)
        expected = np.asarray(build.canary_probabilities, dtype=np.float64)
        diff = float(np.max(np.abs(served - expected)))
        tolerated = build.canary_atol(self.canary_atol)
        if not diff <= tolerated:
            raise CanaryError(
                f"canary: version {build.version} scores its {len(records)} canary records"
                f" up to {diff:.2e} away from its build's scores (tolerated {tolerated:g})"
            )
        return diff

    def _infer(self, model: str, version: int, inputs: list, outputs: list[str]) -> list:
        result = self._triton.infer(
            model,
            inputs,
            model_version=str(version),
            outputs=[InferRequestedOutput(name) for name in outputs],
            headers=self.connection.headers,
        )
        return [result.as_numpy(name) for name in outputs]

    def _score_steps(self, records: list[dict], version: int) -> np.ndarray:
        """The canary through the steps of `version`, called one after the other."""
        parsed = [parse_record(record) for record in records]
        ids, mask, features = self._infer(
            contract.PREPROCESS,
            version,
            build_inputs(parsed),
            [contract.INPUT_IDS, contract.ATTENTION_MASK, contract.FEATURES],
        )
        (embedding,) = self._infer(
            contract.ENCODER,
            version,
            [_tensor(contract.INPUT_IDS, ids), _tensor(contract.ATTENTION_MASK, mask)],
            [contract.EMBEDDING],
        )
        (probability,) = self._infer(
            contract.HEAD,
            version,
            [_tensor(contract.EMBEDDING, embedding), _tensor(contract.FEATURES, features)],
            [contract.PURCHASE_PROBABILITY],
        )
        return probability[:, 0].astype(np.float64)

    def _score_ensemble(self, records: list[dict], version: int) -> np.ndarray:
        parsed = [parse_record(record) for record in records]
        (probability,) = self._infer(
            contract.ENSEMBLE, version, build_inputs(parsed), [contract.PURCHASE_PROBABILITY]
        )
        return probability[:, 0].astype(np.float64)


def _tensor(name: str, array: np.ndarray) -> InferInput:
    tensor = InferInput(name, list(array.shape), "INT64" if array.dtype == np.int64 else "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


@contextlib.contextmanager
def _timed(seconds: dict[str, float], phase: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[phase] = time.perf_counter() - started
