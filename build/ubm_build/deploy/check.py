"""Which check a document gets: KServe kinds the wheel's API types, ServiceMonitor its structural
check, every other kind its Kubernetes schema; a kind with none of these is a problem."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ubm_build.deploy import kserve, kubernetes, monitoring
from ubm_build.deploy.problems import Problem


def describe(doc: Any) -> str:
    """``Kind/name`` of a document, what it can of that."""
    if not isinstance(doc, dict):
        return "(not a mapping)"
    metadata = doc.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return f"{doc.get('kind', '(no kind)')}/{name or '(no name)'}"


def _named(doc: dict[str, Any]) -> list[Problem]:
    metadata = doc.get("metadata")
    if isinstance(metadata, dict) and (metadata.get("name") or metadata.get("generateName")):
        return []
    return [Problem("$.metadata.name", "required field missing")]


@dataclass(frozen=True)
class Checker:
    """Checks documents against Kubernetes `version`'s schemas and the kserve wheel's types."""

    version: str
    walker: kserve.Walker

    @classmethod
    def load(cls, version: str, wheel: Path) -> Checker:
        """A checker for Kubernetes `version` (raises `DeployError` if there is no schema for
        it) and the kserve `wheel` (raises if unreadable)."""
        kubernetes.schema_release(version)
        return cls(version, kserve.Walker(kserve.load_models(wheel), version))

    def check(self, doc: Any) -> list[Problem]:
        """Everything wrong with `doc`; none if it is valid."""
        if not isinstance(doc, dict):
            return [Problem("$", "a manifest must be a mapping")]
        api_version, kind = doc.get("apiVersion"), doc.get("kind")
        if not isinstance(api_version, str) or not isinstance(kind, str):
            return [Problem("$", "apiVersion and kind must be strings")]
        if kserve.is_kserve(api_version):
            problems = self.walker.check(doc)
        elif (api_version, kind) == (monitoring.API_VERSION, monitoring.KIND):
            problems = monitoring.check(doc, self.version)
        else:
            problems = kubernetes.validate(doc, self.version)
        return _named(doc) + problems
