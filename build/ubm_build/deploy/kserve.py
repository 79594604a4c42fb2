"""KServe kinds (``serving.kserve.io``), checked against the API types of the kserve wheel.

The wheel is read, never imported (importing kserve pulls in fastapi, and its protobuf pin
clashes with tritonclient's). Each generated model class in ``kserve/models/*.py`` is parsed for
its ``openapi_types`` (attribute -> type: ``str``, ``list[V1EnvVar]``, ``dict(str, str)``,
``V1beta1PredictorSpec``...), its ``attribute_map`` (attribute -> JSON field) and the fields
whose setters refuse None (its client-side validation). A document is walked from the class of
its kind (``v1beta1`` ``InferenceService`` -> ``V1beta1InferenceService``): unknown fields,
missing required ones and wrong primitive types are problems, and the Kubernetes types inside
(``V1Container``, ``V1ObjectMeta``...) go to their strict Kubernetes schemas.
"""

from __future__ import annotations

import ast
import datetime
import difflib
import functools
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ubm_build.deploy import kubernetes
from ubm_build.deploy.problems import DeployError, Problem, child

GROUP = "serving.kserve.io"
WHEELS = Path(sys.prefix) / "wheels"
"""Where ``make install`` downloads the wheel (without its dependencies)."""
_MODULE = re.compile(r"kserve/models/\w+\.py")
_LIST = re.compile(r"list\[(.+)\]")
_DICT = re.compile(r"dict\(str, (.+)\)")
_PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "datetime": (str, datetime.date),
    "date": (str, datetime.date),
    "ResourceQuantity": (str, int, float),
}
"""The generator's scalar types, and the YAML values each takes (`bool` only where it says so;
YAML reads an unquoted timestamp as a date)."""


@dataclass(frozen=True)
class Model:
    """A generated API type: its JSON fields' types, and those that must be set."""

    fields: dict[str, str]
    required: frozenset[str]


def find_wheel(directory: Path = WHEELS) -> Path:
    """The kserve wheel in `directory` (the newest by name if several)."""
    wheels = sorted(directory.glob("kserve-*.whl"))
    if not wheels:
        raise DeployError(f"no kserve wheel in {directory}: run `make install`")
    return wheels[-1]


def _refuses_none(function: ast.FunctionDef) -> bool:
    """Whether `function` is a property setter that raises when its value is None."""
    if not any(
        isinstance(d, ast.Attribute) and d.attr == "setter" for d in function.decorator_list
    ):
        return False
    value = function.args.args[-1].arg
    for node in ast.walk(function):
        if isinstance(node, ast.If) and any(isinstance(s, ast.Raise) for s in node.body):
            for test in ast.walk(node.test):
                if (
                    isinstance(test, ast.Compare)
                    and isinstance(test.left, ast.Name)
                    and test.left.id == value
                    and isinstance(test.ops[0], ast.Is)
                    and isinstance(test.comparators[0], ast.Constant)
                    and test.comparators[0].value is None
                ):
                    return True
    return False


def _model(cls: ast.ClassDef) -> Model | None:
    assigned = {
        target.id: statement.value
        for statement in cls.body
        if isinstance(statement, ast.Assign)
        for target in statement.targets
        if isinstance(target, ast.Name)
    }
    if "openapi_types" not in assigned or "attribute_map" not in assigned:
        return None
    types: dict[str, str] = ast.literal_eval(assigned["openapi_types"])
    names: dict[str, str] = ast.literal_eval(assigned["attribute_map"])
    required = {
        names[f.name]
        for f in cls.body
        if isinstance(f, ast.FunctionDef) and f.name in names and _refuses_none(f)
    }
    return Model({names[attr]: type_ for attr, type_ in types.items()}, frozenset(required))


@functools.cache
def load_models(wheel: Path) -> dict[str, Model]:
    """Every generated API type in `wheel`, by class name."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            sources = [archive.read(n) for n in archive.namelist() if _MODULE.fullmatch(n)]
    except (OSError, zipfile.BadZipFile) as e:
        raise DeployError(f"cannot read the kserve wheel {wheel}: {e}") from e
    models = {
        node.name: model
        for source in sources
        for node in ast.parse(source).body
        if isinstance(node, ast.ClassDef) and (model := _model(node)) is not None
    }
    if not models:
        raise DeployError(f"no KServe API types in {wheel}")
    return models


def is_kserve(api_version: str) -> bool:
    return api_version.partition("/")[0] == GROUP


def class_name(api_version: str, kind: str) -> str:
    """``serving.kserve.io/v1beta1``, ``InferenceService`` -> ``V1beta1InferenceService``."""
    return "V" + api_version.partition("/")[2].removeprefix("v") + kind


def _described(value: Any) -> str:
    for kinds, words in (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a number"),
        (str, "a string"),
        (list, "a list"),
        (dict, "a mapping"),
    ):
        if isinstance(value, kinds):
            return words
    return type(value).__name__


@dataclass(frozen=True)
class Walker:
    """Checks values against the API types `models`, with Kubernetes `version`'s schemas."""

    models: dict[str, Model]
    version: str

    def check(self, doc: dict[str, Any]) -> list[Problem]:
        """A whole KServe object."""
        name = class_name(doc["apiVersion"], doc["kind"])
        if name not in self.models:
            return [Problem("$", f"no schema for {doc['kind']} {doc['apiVersion']}")]
        return self.value(doc, name, "$")

    def value(self, value: Any, type_: str, path: str) -> list[Problem]:
        """`value`, found at `path`, against the generated type `type_`."""
        if value is None:  # as omitted; a required field's absence is its parent's problem
            return []
        if match := _LIST.fullmatch(type_):
            if not isinstance(value, list):
                return [Problem(path, f"expected a list, got {_described(value)}")]
            return [
                p
                for i, item in enumerate(value)
                for p in self.value(item, match[1], child(path, i))
            ]
        if match := _DICT.fullmatch(type_):
            if not isinstance(value, dict):
                return [Problem(path, f"expected a mapping, got {_described(value)}")]
            return [
                p
                for k, item in value.items()
                for p in self.value(item, match[1], child(path, str(k)))
            ]
        if type_ == "object":
            return []
        if type_ in _PRIMITIVES:
            fits = isinstance(value, _PRIMITIVES[type_])
            if fits and (type_ == "bool" or not isinstance(value, bool)):
                return []
            return [Problem(path, f"expected {type_}, got {_described(value)}")]
        if type_ in self.models:
            return self.object(value, self.models[type_], type_, path)
        return kubernetes.validate_type(value, type_, self.version, path)

    def object(self, value: Any, model: Model, name: str, path: str) -> list[Problem]:
        if not isinstance(value, dict):
            return [Problem(path, f"expected a mapping ({name}), got {_described(value)}")]
        problems = []
        for key, item in value.items():
            if key in model.fields:
                problems += self.value(item, model.fields[key], child(path, key))
                continue
            same = [f for f in model.fields if f.lower() == str(key).lower()]
            close = same or difflib.get_close_matches(str(key), model.fields, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            problems.append(Problem(child(path, str(key)), f"unknown field in {name}{hint}"))
        problems += [
            Problem(child(path, key), f"required field of {name} missing")
            for key in sorted(model.required)
            if value.get(key) is None
        ]
        return problems
