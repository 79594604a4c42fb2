"""Deployment manifest checks (`python -m ubm_build.deploy`, `make deploy-check`).

The Helm chart ``deploy/helm/ubm`` is rendered by the real ``helm`` binary with its default
values and each ``ci/*-values.yaml`` (and linted with ``--strict``); the plain manifests in
``deploy/kserve`` are read as they are. Every document is then checked, unknown fields being
errors everywhere:

    render      helm template / helm lint, and YAML documents from files
    kubernetes  the Kubernetes JSON schemas of kubernetes-validate, whole objects or one type
    kserve      KServe kinds, walked through the API types of the kserve wheel (never imported)
    monitoring  ServiceMonitor: a structural check, not the Prometheus Operator's CRD schema
    check       which of those a document gets; a kind with no schema is an error

When the checks cannot run, the library raises `DeployError`, which ``__main__`` turns into exit
code 2; a chart helm cannot render or lint (`render.RenderError`) is a failed check (exit 1).
"""
