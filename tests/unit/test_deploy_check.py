"""The deployment manifest checks (`python -m ubm_build.deploy`) with the real helm binary, the
Kubernetes schemas of kubernetes-validate and the kserve wheel: no mocks. A throwaway chart
tests the mechanics; the project's chart (``deploy/helm/ubm``) and KServe manifests
(``deploy/kserve``) are tested once they exist. ``UBM_UPDATE_GOLDEN=1`` rewrites the golden
renders in ``tests/golden/deploy`` instead of comparing them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from ubm_build.deploy import kserve, kubernetes, render
from ubm_build.deploy.__main__ import main
from ubm_build.deploy.check import Checker
from ubm_build.deploy.problems import DeployError, Problem

GOLDEN = Path(__file__).parent.parent / "golden" / "deploy"
UPDATE_GOLDEN = os.environ.get("UBM_UPDATE_GOLDEN") == "1"
VERSION = kubernetes.DEFAULT_VERSION

TINY_CHART = {
    "Chart.yaml": """\
apiVersion: v2
name: tiny
description: A throwaway chart for the deploy checks' tests
version: 0.1.0
appVersion: "1.0"
icon: https://example.com/icon.png
""",
    "values.yaml": "replicas: 1\nimage: nginx:1.27\nport: 8000\n",
    "ci/scaled-values.yaml": "replicas: 3\n",
    "templates/deployment.yaml": """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
  labels: {app: {{ .Release.Name }}}
spec:
  replicas: {{ .Values.replicas }}
  selector:
    matchLabels: {app: {{ .Release.Name }}}
  template:
    metadata:
      labels: {app: {{ .Release.Name }}}
    spec:
      containers:
        - name: server
          image: {{ required "image is required" .Values.image }}
          ports: [{containerPort: {{ .Values.port }}, name: http}]
""",
    "templates/service.yaml": """\
apiVersion: v1
kind: Service
metadata:
  name: {{ .Release.Name }}
spec:
  selector: {app: {{ .Release.Name }}}
  ports: [{port: {{ .Values.port }}, targetPort: http, name: http}]
""",
}

INFERENCE_SERVICE = """\
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: ubm}
spec:
  predictor:
    minReplicas: 2
    model:
      modelFormat: {name: triton, version: "2"}
      runtime: ubm-triton
      storageUri: s3://bucket/ubm/model_repository
      resources: {limits: {cpu: "2", memory: 4Gi}}
"""
SERVING_RUNTIME = """\
apiVersion: serving.kserve.io/v1alpha1
kind: ServingRuntime
metadata: {name: ubm-triton}
spec:
  supportedModelFormats: [{name: triton, version: "2", autoSelect: true}]
  protocolVersions: [v2, grpc-v2]
  containers:
    - name: kserve-container
      image: nvcr.io/nvidia/tritonserver:25.01-py3
      args: [tritonserver, --model-store=/mnt/models]
      ports: [{containerPort: 8001, name: h2c, protocol: TCP}]
      resources: {limits: {cpu: "2", memory: 4Gi}}
"""
SERVICE_MONITOR = """\
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: {name: ubm, labels: {release: prometheus}}
spec:
  selector: {matchLabels: {app: ubm}}
  endpoints: [{port: metrics, path: /metrics, interval: 15s, scheme: http}]
"""


@pytest.fixture(scope="module")
def checker() -> Checker:
    return Checker.load(VERSION, kserve.find_wheel())


@pytest.fixture(scope="module")
def helm() -> Path:
    return render.find_helm()


def write_chart(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


@pytest.fixture(scope="module")
def tiny_chart(tmp_path_factory) -> Path:
    return write_chart(tmp_path_factory.mktemp("chart") / "tiny", TINY_CHART)


def problems_of(checker: Checker, text: str) -> list[Problem]:
    return checker.check(yaml.safe_load(text))


def changed(text: str, path: str, value: Any = None, *, rename: str | None = None) -> dict:
    """The document of `text` with the field at dotted `path` set to `value`, or renamed."""
    doc = yaml.safe_load(text)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if rename is not None:
        node[rename] = node.pop(last)
    else:
        node[last] = value
    return doc


def rendered(helm: Path, chart: Path, value_set: render.ValueSet) -> list[Any]:
    return render.documents(render.render(helm, chart, value_set, VERSION))


def assert_matches_golden(text: str, name: str) -> None:
    path = GOLDEN / name
    if UPDATE_GOLDEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    rerun = "UBM_UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_deploy_check.py"
    assert path.is_file(), f"no golden file {path}: make it with {rerun}"
    assert text == path.read_text(), f"the render differs from {path}; if meant: {rerun}"


# The mechanics, on the throwaway chart.


def test_value_sets_are_the_defaults_then_the_ci_files_then_the_extra_ones(tiny_chart, tmp_path):
    extra = tmp_path / "platform.yaml"
    extra.write_text("replicas: 5\n")
    sets = render.value_sets(tiny_chart, (str(extra),))
    assert [s.name for s in sets] == ["default", "scaled", str(extra)]
    assert sets[1].files == (tiny_chart / "ci" / "scaled-values.yaml",)
    with pytest.raises(DeployError, match="values file not found"):
        render.value_sets(tiny_chart, (str(tmp_path / "missing.yaml"),))


def test_every_value_set_lints_renders_and_validates(tiny_chart, helm, checker):
    for value_set in render.value_sets(tiny_chart):
        assert render.lint(helm, tiny_chart, value_set, VERSION) == []
        docs = rendered(helm, tiny_chart, value_set)
        assert sorted(d["kind"] for d in docs) == ["Deployment", "Service"]
        assert [checker.check(d) for d in docs] == [[], []]
    scaled = rendered(
        helm, tiny_chart, render.ValueSet("scaled", (tiny_chart / "ci/scaled-values.yaml",))
    )
    assert next(d for d in scaled if d["kind"] == "Deployment")["spec"]["replicas"] == 3


def test_the_default_render_matches_its_golden_file(tiny_chart, helm):
    assert_matches_golden(
        render.render(helm, tiny_chart, render.ValueSet("default"), VERSION), "tiny.yaml"
    )


def test_helm_failures_are_reported(tiny_chart, helm, tmp_path):
    no_image = tmp_path / "no-image.yaml"
    no_image.write_text("image: null\n")
    with pytest.raises(render.RenderError, match="image is required"):
        render.render(helm, tiny_chart, render.ValueSet("no-image", (no_image,)), VERSION)
    broken = write_chart(
        tmp_path / "broken",
        {**TINY_CHART, "templates/broken.yaml": "port: {{ .Values.port | nosuchfunc }}\n"},
    )
    [error] = render.lint(helm, broken, render.ValueSet("default"), VERSION)
    assert error.startswith("[ERROR]") and "nosuchfunc" in error
    with pytest.raises(render.RenderError, match="nosuchfunc"):
        render.render(helm, broken, render.ValueSet("default"), VERSION)


# The validators bite.


def test_a_misspelled_kubernetes_field_is_an_error(checker):
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "ubm"},
        "spec": {
            "replica": 2,
            "selector": {"matchLabels": {"app": "ubm"}},
            "template": {
                "metadata": {"labels": {"app": "ubm"}},
                "spec": {"containers": [{"name": "server", "image": "nginx"}]},
            },
        },
    }
    assert checker.check(deployment) == [Problem("$.spec.replica", "unknown field")]
    deployment["spec"]["replicas"] = deployment["spec"].pop("replica")
    assert checker.check(deployment) == []
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"] = [{"containerPort": "80"}]
    [problem] = checker.check(deployment)
    assert problem.path == "$.spec.template.spec.containers[0].ports[0].containerPort"


def test_a_valid_inference_service_and_serving_runtime_pass(checker):
    assert problems_of(checker, INFERENCE_SERVICE) == []
    assert problems_of(checker, SERVING_RUNTIME) == []


@pytest.mark.parametrize(
    ("text", "path", "value", "rename", "expected"),
    [
        (INFERENCE_SERVICE, "spec.predictor.model.storageUri", None, "storageURI",
         ("$.spec.predictor.model.storageURI", "did you mean storageUri?")),
        (INFERENCE_SERVICE, "spec.predictor.modle", {}, None,
         ("$.spec.predictor.modle", "unknown field in V1beta1PredictorSpec")),
        (INFERENCE_SERVICE, "spec.predictor.model.resources.limits", ["cpu"], None,
         ("$.spec.predictor.model.resources.limits", "is not of type 'object'")),
        (INFERENCE_SERVICE, "spec.predictor.minReplicas", "2", None,
         ("$.spec.predictor.minReplicas", "expected int, got a string")),
        (INFERENCE_SERVICE, "spec.predictor.containers", [{"image": "x", "tty": "yes"}], None,
         ("$.spec.predictor.containers[0]", "'name' is a required property")),
        (INFERENCE_SERVICE, "metadata.labels", {"app": 1}, None,
         ("$.metadata.labels.app", "is not of type 'string'")),
        (INFERENCE_SERVICE, "spec.predictor", None, None,
         ("$.spec.predictor", "required field of V1beta1InferenceServiceSpec missing")),
        (SERVING_RUNTIME, "spec.containers", None, None,
         ("$.spec.containers", "required field of V1alpha1ServingRuntimeSpec missing")),
        (SERVING_RUNTIME, "spec.containers.0.resources.limit", {}, None,
         ("$.spec.containers[0].resources.limit", "unknown field")),
        (SERVING_RUNTIME, "spec.multiModel", "false", None,
         ("$.spec.multiModel", "expected bool, got a string")),
    ],
)  # fmt: skip
def test_kserve_mistakes_are_errors_at_their_json_path(
    checker, text, path, value, rename, expected
):
    problems = checker.check(changed(text, path, value, rename=rename))
    where, message = expected
    assert any(p.path == where and message in p.message for p in problems), problems


def test_a_service_monitor_is_checked_for_its_structure(checker):
    assert problems_of(checker, SERVICE_MONITOR) == []
    for path, value, where in [
        ("spec.endpoints", [], "$.spec.endpoints"),
        (
            "spec.endpoints",
            [{"port": "metrics", "intervall": "15s"}],
            "$.spec.endpoints[0].intervall",
        ),
        ("spec.endpoints", [{"port": 9090}], "$.spec.endpoints[0].port"),
        (
            "spec.endpoints",
            [{"port": "metrics", "interval": "15 s"}],
            "$.spec.endpoints[0].interval",
        ),
        ("spec.selector", {"matchLabel": {"app": "ubm"}}, "$.spec.selector.matchLabel"),
        ("spec.jobLabels", "app", "$.spec.jobLabels"),
        ("metadata.labels", ["release"], "$.metadata.labels"),
    ]:
        assert [p.path for p in checker.check(changed(SERVICE_MONITOR, path, value))] == [where]
    no_selector = yaml.safe_load(SERVICE_MONITOR)
    del no_selector["spec"]["selector"]
    assert checker.check(no_selector) == [Problem("$.spec.selector", "required field missing")]


def test_a_kind_with_no_schema_is_an_error(checker):
    for api_version in ("example.com/v1", "serving.kserve.io/v1beta1"):
        widget = {"apiVersion": api_version, "kind": "Widget", "metadata": {"name": "w"}}
        assert checker.check(widget) == [Problem("$", f"no schema for Widget {api_version}")]
    assert checker.check({"kind": "Widget"})[0].message == "apiVersion and kind must be strings"
    unnamed = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}
    assert checker.check(unnamed) == [Problem("$.metadata.name", "required field missing")]


def test_the_kserve_types_come_from_the_wheel_without_importing_it():
    models = kserve.load_models(kserve.find_wheel())
    assert "kserve" not in sys.modules
    spec = models["V1beta1InferenceServiceSpec"]
    assert spec.fields["predictor"] == "V1beta1PredictorSpec"
    assert spec.required == {"predictor"}
    assert models["V1beta1ModelSpec"].fields["storageUri"] == "str"
    assert models["V1beta1PredictorSpec"].fields["containers"] == "list[V1Container]"


def test_kubernetes_types_map_to_their_strict_schema_files():
    assert kubernetes.schema_file("V1Container", VERSION).name == "container-v1.json"
    assert kubernetes.schema_file("V1ObjectMeta", VERSION).name == "objectmeta-meta-v1.json"
    assert (
        kubernetes.schema_file("K8sIoApiAppsV1DeploymentStrategy", VERSION).name
        == "deploymentstrategy-apps-v1.json"
    )
    assert kubernetes.schema_file("V1NoSuchThing", VERSION) is None
    assert kubernetes.schema_release("1.37") == "1.37.0"
    with pytest.raises(DeployError, match=r"no schemas for Kubernetes 1\.99"):
        kubernetes.schema_release("1.99")


def test_a_missing_wheel_names_make_install(tmp_path):
    with pytest.raises(DeployError, match="make install"):
        kserve.find_wheel(tmp_path)


# The command.


def run_module(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ubm_build.deploy", *args], capture_output=True, text=True
    )


def test_the_module_runs_and_says_in_one_line_what_is_missing(tmp_path):
    helped = run_module("--help")
    assert helped.returncode == 0
    assert "--kubernetes-version" in helped.stdout
    missing = run_module("--chart", str(tmp_path / "nowhere"), "--manifests", str(tmp_path))
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0
    assert "no Helm chart" in missing.stderr


def test_the_command_checks_the_chart_and_the_manifests(tiny_chart, tmp_path):
    manifests = tmp_path / "kserve"
    manifests.mkdir()
    (manifests / "serving.yaml").write_text(f"{INFERENCE_SERVICE}---\n{SERVING_RUNTIME}")
    platform = tmp_path / "platform.yaml"
    platform.write_text("replicas: 4\n")
    args = ["--chart", str(tiny_chart), "--manifests", str(manifests), "--values", str(platform)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "ok   default" in result.output
    assert "InferenceService/ubm" in result.output
    assert result.output.splitlines()[-1] == "8 manifests valid across 3 value sets"

    (manifests / "bad.yaml").write_text(
        INFERENCE_SERVICE.replace("storageUri", "storageURI") + "---\nkind: Widget\n"
    )
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "$.spec.predictor.model.storageURI: unknown field" in result.output
    assert result.output.splitlines()[-1] == "2 of 10 manifests invalid across 3 value sets"

    result = CliRunner().invoke(main, [*args, "--kubernetes-version", "1.99"])
    assert result.exit_code == 2


# The project's own chart and manifests, once they exist.


def real_value_sets() -> list:
    if not (render.CHART / "Chart.yaml").is_file():
        reason = f"no chart at {render.CHART} yet"
        return [pytest.param(None, marks=pytest.mark.skip(reason=reason), id="no-chart")]
    return [pytest.param(s, id=s.name) for s in render.value_sets(render.CHART)]


@pytest.mark.parametrize("value_set", real_value_sets())
def test_the_chart_lints_renders_and_validates_with_each_value_set(value_set, helm, checker):
    assert render.lint(helm, render.CHART, value_set, VERSION) == []
    docs = rendered(helm, render.CHART, value_set)
    assert docs, "the chart renders nothing"
    problems = {
        f"{d.get('kind')}/{d.get('metadata', {}).get('name')}": checker.check(d) for d in docs
    }
    assert {name: p for name, p in problems.items() if p} == {}


def test_the_chart_default_render_matches_its_golden_file(helm):
    if not (render.CHART / "Chart.yaml").is_file():
        pytest.skip(f"no chart at {render.CHART} yet")
    default = render.render(helm, render.CHART, render.ValueSet("default"), VERSION)
    assert_matches_golden(default, "default.yaml")


def test_the_kserve_manifests_validate(checker):
    files = render.manifest_files(render.MANIFESTS) if render.MANIFESTS.is_dir() else []
    if not files:
        pytest.skip(f"no *.yaml under {render.MANIFESTS} yet")
    for path in files:
        for doc in render.documents(path.read_text()):
            assert checker.check(doc) == [], path


def test_the_command_passes_on_the_project():
    if not (render.CHART / "Chart.yaml").is_file() or not render.MANIFESTS.is_dir():
        pytest.skip(f"no chart at {render.CHART} or no {render.MANIFESTS} yet")
    result = run_module()
    assert result.returncode == 0, result.stdout + result.stderr
