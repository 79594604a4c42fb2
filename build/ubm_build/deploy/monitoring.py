"""ServiceMonitor (Prometheus Operator, ``monitoring.coreos.com/v1``): a structural check, not
the CRD's schema, which no package registry serves.

Checked: the top-level fields, ``metadata`` against the Kubernetes ObjectMeta schema, the
``spec`` fields the operator knows, ``spec.selector`` present (a Kubernetes LabelSelector),
``spec.endpoints`` a non-empty list whose items use only the endpoint fields the operator knows,
with the common ones' types and the durations' and schemes' forms. The contents of
``tlsConfig``, ``authorization``, ``relabelings`` and the like are not.
"""

from __future__ import annotations

import re
from typing import Any

from ubm_build.deploy import kubernetes
from ubm_build.deploy.problems import Problem, child

API_VERSION = "monitoring.coreos.com/v1"
KIND = "ServiceMonitor"
SPEC_FIELDS = frozenset(
    {
        "attachMetadata",
        "bodySizeLimit",
        "convertClassicHistogramsToNHCB",
        "endpoints",
        "fallbackScrapeProtocol",
        "jobLabel",
        "keepDroppedTargets",
        "labelLimit",
        "labelNameLengthLimit",
        "labelValueLengthLimit",
        "namespaceSelector",
        "nativeHistogramBucketLimit",
        "nativeHistogramMinBucketFactor",
        "podTargetLabels",
        "sampleLimit",
        "scrapeClass",
        "scrapeClassicHistograms",
        "scrapeProtocols",
        "selector",
        "selectorMechanism",
        "targetLabels",
        "targetLimit",
    }
)
ENDPOINT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "authorization": dict,
    "basicAuth": dict,
    "bearerTokenFile": str,
    "bearerTokenSecret": dict,
    "enableHttp2": bool,
    "filterRunning": bool,
    "followRedirects": bool,
    "honorLabels": bool,
    "honorTimestamps": bool,
    "interval": str,
    "metricRelabelings": list,
    "noProxy": str,
    "oauth2": dict,
    "params": dict,
    "path": str,
    "port": str,
    "proxyConnectHeader": dict,
    "proxyFromEnvironment": bool,
    "proxyUrl": str,
    "relabelings": list,
    "scheme": str,
    "scrapeTimeout": str,
    "targetPort": (int, str),
    "tlsConfig": dict,
    "trackTimestampsStaleness": bool,
}
"""The endpoint fields, each with the YAML type it takes."""
DURATION = re.compile(r"0|(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?")
"""A Prometheus duration (the CRD's pattern for ``interval`` and ``scrapeTimeout``)."""
SCHEMES = frozenset({"http", "https", "HTTP", "HTTPS"})


def _endpoint(endpoint: Any, path: str) -> list[Problem]:
    if not isinstance(endpoint, dict):
        return [Problem(path, "an endpoint must be a mapping")]
    problems = []
    for key, value in endpoint.items():
        where = child(path, str(key))
        expected = ENDPOINT_FIELDS.get(key)
        if expected is None:
            problems.append(Problem(where, "unknown field in a ServiceMonitor endpoint"))
        elif not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            problems.append(Problem(where, f"{value!r} is not of the type of {key}"))
        elif key in ("interval", "scrapeTimeout") and not (value and DURATION.fullmatch(value)):
            problems.append(Problem(where, f"{value!r} is not a Prometheus duration (30s, 1m)"))
        elif key == "scheme" and value not in SCHEMES:
            problems.append(Problem(where, f"{value!r} is not one of {sorted(SCHEMES)}"))
    return problems


def check(doc: dict[str, Any], version: str) -> list[Problem]:
    """The structure of the ServiceMonitor `doc` (see the module's docstring)."""
    problems = [
        Problem(child("$", str(key)), "unknown field in a ServiceMonitor")
        for key in doc
        if key not in ("apiVersion", "kind", "metadata", "spec")
    ]
    problems += kubernetes.validate_type(doc.get("metadata"), "V1ObjectMeta", version, "$.metadata")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return [*problems, Problem("$.spec", "a ServiceMonitor needs a spec mapping")]
    problems += [
        Problem(child("$.spec", str(key)), "unknown field in a ServiceMonitor spec")
        for key in spec
        if key not in SPEC_FIELDS
    ]
    if "selector" in spec:
        problems += kubernetes.validate_type(
            spec["selector"], "V1LabelSelector", version, "$.spec.selector"
        )
    else:
        problems.append(Problem("$.spec.selector", "required field missing"))
    endpoints = spec.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        problems.append(Problem("$.spec.endpoints", "must be a non-empty list"))
    else:
        for i, endpoint in enumerate(endpoints):
            problems += _endpoint(endpoint, child("$.spec.endpoints", i))
    return problems
