"""The manifests to check: the chart rendered by ``helm template`` for each value set, and the
YAML documents of plain manifest files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ubm_build.deploy.problems import DeployError
from ubm_build.paths import PROJECT_ROOT, shown

CHART = PROJECT_ROOT / "deploy" / "helm" / "ubm"
MANIFESTS = PROJECT_ROOT / "deploy" / "kserve"
RELEASE = "ubm"
API_VERSIONS = (
    "monitoring.coreos.com/v1",
    "serving.kserve.io/v1beta1",
    "serving.kserve.io/v1alpha1",
)
"""Rendered as for a cluster with the Prometheus Operator and KServe installed, so templates that
ask ``.Capabilities.APIVersions.Has`` render what these checks can read."""
CI_VALUES = "ci/*-values.yaml"
"""chart-testing's convention: each file is a value set of its own, on top of the defaults."""


class RenderError(Exception):
    """helm could not render or lint the chart with a value set: its message, as helm gave it."""


@dataclass(frozen=True)
class ValueSet:
    """A name (``default``, ``gpu`` for ``ci/gpu-values.yaml``) and the values files, in
    helm's order (later files win), layered on the chart's own ``values.yaml``."""

    name: str
    files: tuple[Path, ...] = ()

    def helm_args(self) -> list[str]:
        return [arg for path in self.files for arg in ("--values", str(path))]


def find_helm() -> Path:
    """The helm next to this Python (the helm-binary package puts it in the venv), else on PATH."""
    beside = Path(sys.executable).parent / "helm"
    if beside.is_file():
        return beside
    found = shutil.which("helm")
    if found is None:
        raise DeployError(
            f"helm not found next to {sys.executable} nor on PATH: run `make install`"
        )
    return Path(found)


def value_sets(chart: Path, extra: tuple[str, ...] = ()) -> list[ValueSet]:
    """The defaults, each of the chart's ``ci/*-values.yaml``, then each of `extra`: one values
    file, or several separated by commas (layered, as ``helm --values a.yaml,b.yaml``)."""
    sets = [ValueSet("default")]
    sets += [
        ValueSet(path.name.removesuffix("-values.yaml"), (path,))
        for path in sorted(chart.glob(CI_VALUES))
    ]
    for spec in extra:
        files = tuple(Path(part) for part in spec.split(",") if part)
        for path in files:
            if not path.is_file():
                raise DeployError(f"values file not found: {path}")
        sets.append(ValueSet(",".join(shown(path) for path in files), files))
    return sets


def check_chart(chart: Path) -> None:
    """Raises `DeployError` unless `chart` is a directory with a ``Chart.yaml``."""
    if not (chart / "Chart.yaml").is_file():
        raise DeployError(f"no Helm chart at {chart} (no Chart.yaml)")


def _helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, check=False)


def render(
    helm: Path, chart: Path, values: ValueSet, kube_version: str, release: str = RELEASE
) -> str:
    """``helm template`` of `chart` with `values`: the manifests, as helm writes them."""
    done = _helm(
        helm,
        "template",
        release,
        str(chart),
        *values.helm_args(),
        "--kube-version",
        kube_version,
        *(arg for version in API_VERSIONS for arg in ("--api-versions", version)),
    )
    if done.returncode != 0:
        raise RenderError(done.stderr.strip() or f"helm template exited {done.returncode}")
    return done.stdout


def lint(helm: Path, chart: Path, values: ValueSet, kube_version: str) -> list[str]:
    """``helm lint --strict`` of `chart` with `values`: its errors and warnings, none if it
    passed."""
    done = _helm(
        helm, "lint", "--strict", str(chart), *values.helm_args(), "--kube-version", kube_version
    )
    if done.returncode == 0:
        return []
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines()]
    found = [line for line in lines if line.startswith(("[ERROR]", "[WARNING]"))]
    return found or [line for line in lines if line] or [f"helm lint exited {done.returncode}"]


class _Loader(yaml.SafeLoader):
    """Safe YAML, reading the ``=`` scalar (a value key) as a string, as kubectl does."""


_Loader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: str(node.value))


def documents(text: str) -> list[Any]:
    """The YAML documents of `text`, empty ones dropped (raises `yaml.YAMLError`)."""
    return [doc for doc in yaml.load_all(text, Loader=_Loader) if doc is not None]


def manifest_files(directory: Path) -> list[Path]:
    """Every ``*.yaml`` under `directory`, sorted."""
    if not directory.is_dir():
        raise DeployError(f"manifest directory not found: {directory}")
    return sorted(directory.rglob("*.yaml"))
