"""`python -m ubm_build.deploy` (`make deploy-check`): render the chart with each value set, read
the plain manifests, check every document; exit 0 if all are valid, 1 if not, 2 if the checks
cannot run (no helm, chart, values file or kserve wheel)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml

from ubm_build import paths
from ubm_build.deploy import kserve, kubernetes, render
from ubm_build.deploy.check import Checker, describe
from ubm_build.deploy.problems import DeployError, Problem


@dataclass
class Report:
    """Prints a line per document checked, and counts."""

    checker: Checker
    width: int
    value_sets: int
    documents: int = 0
    invalid: int = 0
    helm_failures: int = 0

    def line(self, ok: bool, label: str, what: str, problems: Sequence[str] = ()) -> None:
        status = click.style("ok  ", fg="green") if ok else click.style("FAIL", fg="red")
        click.echo(f"{status} {label:<{self.width}}  {what}")
        for problem in problems:
            click.echo(f"       {problem}")

    def helm_failed(self, label: str, what: str, problems: Sequence[str]) -> None:
        self.helm_failures += 1
        self.line(False, label, what, problems)

    def text(self, label: str, text: str) -> None:
        """Each YAML document of `text`."""
        try:
            docs = render.documents(text)
        except yaml.YAMLError as e:
            self.documents += 1
            self.invalid += 1
            self.line(False, label, "(YAML)", [" ".join(str(e).split())])
            return
        for doc in docs:
            self.document(label, doc)

    def document(self, label: str, doc: Any) -> None:
        problems: list[Problem] = self.checker.check(doc)
        self.documents += 1
        self.invalid += bool(problems)
        self.line(not problems, label, describe(doc), [str(p) for p in problems])


def check_all(
    chart: Path,
    values: tuple[str, ...],
    manifests: Path,
    kubernetes_version: str,
    kserve_wheel: Path | None,
) -> Report:
    """Everything `main` checks, reported as it goes (raises `DeployError`)."""
    helm = render.find_helm()
    render.check_chart(chart)
    sets = render.value_sets(chart, values)
    files = render.manifest_files(manifests)
    checker = Checker.load(kubernetes_version, kserve_wheel or kserve.find_wheel())
    labels = [s.name for s in sets] + [paths.shown(f) for f in files]
    report = Report(checker, max(map(len, labels)), len(sets))
    for value_set in sets:
        try:
            lint_problems = render.lint(helm, chart, value_set, kubernetes_version)
            if lint_problems:
                report.helm_failed(value_set.name, "(helm lint --strict)", lint_problems)
            report.text(value_set.name, render.render(helm, chart, value_set, kubernetes_version))
        except render.RenderError as e:
            report.helm_failed(value_set.name, "(helm template)", str(e).splitlines())
    for path in files:
        report.text(paths.shown(path), path.read_text())
    return report


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--chart",
    type=click.Path(file_okay=False, path_type=Path),
    default=render.CHART,
    help="The Helm chart, rendered with its defaults and each of its ci/*-values.yaml"
    "  [default: deploy/helm/ubm]",
)
@click.option(
    "--values",
    "values",
    multiple=True,
    metavar="FILE[,FILE...]",
    help="One more value set to render the chart with (several files: layered, as helm does)."
    "  [repeatable]",
)
@click.option(
    "--manifests",
    type=click.Path(file_okay=False, path_type=Path),
    default=render.MANIFESTS,
    help="Plain manifests: every *.yaml under it is checked as it is  [default: deploy/kserve]",
)
@click.option(
    "--kubernetes-version",
    default=kubernetes.DEFAULT_VERSION,
    show_default=True,
    help="The Kubernetes release whose schemas (and helm's capabilities) to use.",
)
@click.option(
    "--kserve-wheel",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The kserve wheel to read the KServe API types from  [default: .venv/wheels/kserve-*]",
)
def main(
    chart: Path,
    values: tuple[str, ...],
    manifests: Path,
    kubernetes_version: str,
    kserve_wheel: Path | None,
) -> None:
    """Check the deployment manifests strictly (unknown fields are errors): the Kubernetes
    schemas, the KServe API types, the ServiceMonitor's structure. Exit 0: all valid, 1: some
    invalid, 2: the checks could not run."""
    try:
        if kserve_wheel is not None and not kserve_wheel.is_file():
            raise DeployError(f"kserve wheel not found: {kserve_wheel}")
        report = check_all(chart, values, manifests, kubernetes_version, kserve_wheel)
    except DeployError as e:
        click.echo(f"deploy-check: {e}", err=True)
        raise SystemExit(2) from None
    if report.invalid or report.helm_failures:
        counts = f"{report.invalid} of {report.documents} manifests invalid"
        helm = f"; helm failed {report.helm_failures} times" if report.helm_failures else ""
        click.echo(f"{counts} across {report.value_sets} value sets{helm}")
        raise SystemExit(1)
    click.echo(f"{report.documents} manifests valid across {report.value_sets} value sets")


if __name__ == "__main__":
    main(prog_name="python -m ubm_build.deploy")
