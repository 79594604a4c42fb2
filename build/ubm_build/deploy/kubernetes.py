"""The Kubernetes JSON schemas that kubernetes-validate ships, in strict mode (a field the schema
does not name is an error): whole objects by kind, or one type (``V1Container``) by name."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
from kubernetes_validate import utils
from referencing import Registry, Resource

from ubm_build.deploy.problems import DeployError, Problem, child

DEFAULT_VERSION = "1.37"
SCHEMAS = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
_CORE_TYPE = re.compile(r"V1(?!alpha|beta)([A-Z]\w*)")
"""A Kubernetes type as OpenAPI generators name it: ``V1Container``, ``V1ObjectMeta``."""
_GROUP_TYPE = re.compile(r"K8sIoApi([A-Z][a-z0-9]+)(V\d+(?:alpha\d+|beta\d+)?)([A-Z]\w*)")
"""One of a named API group: ``K8sIoApiAppsV1DeploymentStrategy``."""


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.removeprefix("v").split(".")[:2]
    return int(major), int(minor)


def schema_release(version: str) -> str:
    """The newest schema release kubernetes-validate has for `version` (``1.37`` ->
    ``1.37.0``); raises `DeployError` for a version it has none for."""
    try:
        wanted = _minor(version)
    except ValueError:
        raise DeployError(f"not a Kubernetes version: {version!r} (say 1.37)") from None
    known = [v for v in utils.all_versions() if _minor(v) <= wanted]
    if not known or wanted > _minor(utils.latest_version()):
        raise DeployError(
            f"kubernetes-validate {kubernetes_validate.__version__} has no schemas for"
            f" Kubernetes {version} (it has {utils.all_versions()[0]} to {utils.latest_version()})"
        )
    return known[-1]


def _problems(error: jsonschema.ValidationError, path: str) -> list[Problem]:
    """`error` at `path` + its own path; an unknown field is reported at the field itself."""
    where = path
    for key in error.absolute_path:
        where = child(where, key)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        named = error.schema.get("properties", {})
        unknown = [key for key in error.instance if key not in named]
        if unknown:
            return [Problem(child(where, key), "unknown field") for key in unknown]
    return [Problem(where, error.message)]


def validate(doc: dict[str, Any], version: str) -> list[Problem]:
    """`doc` (a whole object: apiVersion, kind) against its kind's strict schema."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return _problems(e, "$")
    except kubernetes_validate.SchemaNotFoundError:
        return [Problem("$", f"no schema for {doc['kind']} {doc['apiVersion']}")]
    except kubernetes_validate.VersionNotSupportedError as e:
        raise DeployError(e.message) from e
    return []


def _schema_dir(version: str) -> Path:
    return SCHEMAS / f"v{schema_release(version)}-local-strict"


def schema_file(type_name: str, version: str) -> Path | None:
    """The strict schema of a Kubernetes type named as a generated client names it
    (``V1Container`` -> ``container-v1.json``, ``V1ObjectMeta`` -> ``objectmeta-meta-v1.json``,
    ``K8sIoApiAppsV1DeploymentStrategy`` -> ``deploymentstrategy-apps-v1.json``); None if
    there is none."""
    directory = _schema_dir(version)
    if match := _GROUP_TYPE.fullmatch(type_name):
        group, api_version, name = (part.lower() for part in match.groups())
        path = directory / f"{name}-{group}-{api_version}.json"
        return path if path.is_file() else None
    if match := _CORE_TYPE.fullmatch(type_name):
        name = match.group(1).lower()
        core = directory / f"{name}-v1.json"
        if core.is_file():
            return core
        grouped = sorted(directory.glob(f"{name}-*-v1.json"))
        return grouped[0] if len(grouped) == 1 else None
    return None


@functools.cache
def _registry(directory: Path) -> Registry:
    definitions = json.loads((directory / "_definitions.json").read_text())
    return Resource.from_contents(definitions) @ Registry()


@functools.cache
def _validator(path: Path) -> jsonschema.Draft202012Validator:
    schema = json.loads(path.read_text())
    registry = Resource.from_contents(schema) @ _registry(path.parent)
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate_type(value: Any, type_name: str, version: str, path: str) -> list[Problem]:
    """`value`, found at `path`, against the strict schema of the Kubernetes type `type_name`."""
    schema = schema_file(type_name, version)
    if schema is None:
        return [Problem(path, f"no schema for type {type_name}")]
    errors = sorted(
        _validator(schema).iter_errors(value), key=lambda e: [str(k) for k in e.absolute_path]
    )
    return [problem for error in errors for problem in _problems(error, path)]
