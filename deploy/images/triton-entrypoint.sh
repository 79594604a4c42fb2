#!/usr/bin/env bash
# The GPU image's entry point: NVIDIA's tritonserver started the way `ubm-serve serve` starts the
# pip-installed one (see build/ubm_build/serving/server.py), for a repository built with
# `--target onnxruntime`, `openvino` or `tensorrt`. Arguments are passed on to tritonserver.
#
#   UBM_MODEL_REPOSITORY  a path or an object store URL (s3://, gs://, as://)   [/models]
#   UBM_RUN_DIR           where the admin token is written, owner-only            [/run/ubm]
#   UBM_TOKEN_FILE        file holding the client token: inference, metadata, model config and
#                         statistics then need it (header ubm-token); health stays open
#   UBM_TLS_CERT, UBM_TLS_KEY  gRPC over TLS (HTTP then listens on loopback only)
#   UBM_TLS_CLIENT_CA     clients need a certificate signed by it (mutual TLS)
#   UBM_GRPC_PORT, UBM_HTTP_PORT, UBM_METRICS_PORT                             [8001, 8000, 8002]
set -euo pipefail

repository="${UBM_MODEL_REPOSITORY:-/models}"
run_dir="${UBM_RUN_DIR:-/run/ubm}"
umask 077
mkdir -p "$run_dir"
admin_token="$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
printf '%s' "$admin_token" > "$run_dir/admin-token"

restricted=("shared-memory,logging,trace,model-repository:ubm-admin-token=$admin_token")
if [[ -n "${UBM_TOKEN_FILE:-}" ]]; then
    token="$(tr -d '[:space:]' < "$UBM_TOKEN_FILE")"
    if (( ${#token} < 16 )); then
        echo "ubm: the token in $UBM_TOKEN_FILE is shorter than 16 characters" >&2
        exit 2
    fi
    restricted+=("inference,metadata,model-config,statistics:ubm-token=$token")
fi

http_address=0.0.0.0
tls=()
if [[ -n "${UBM_TLS_CERT:-}" ]]; then
    tls=(--grpc-use-ssl=true --grpc-server-cert="$UBM_TLS_CERT" --grpc-server-key="$UBM_TLS_KEY")
    if [[ -n "${UBM_TLS_CLIENT_CA:-}" ]]; then
        tls+=(--grpc-use-ssl-mutual=true --grpc-root-cert="$UBM_TLS_CLIENT_CA")
    fi
    http_address=127.0.0.1
fi

arguments=(
    --model-repository="$repository"
    "--backend-config=python,shm-region-prefix-name=ubm"
    --model-control-mode=explicit
    --load-model=ubm
    --grpc-address=0.0.0.0
    --grpc-port="${UBM_GRPC_PORT:-8001}"
    "${tls[@]}"
    --http-address="$http_address"
    --http-port="${UBM_HTTP_PORT:-8000}"
    --metrics-port="${UBM_METRICS_PORT:-8002}"
    --exit-timeout-secs=10
)
for r in "${restricted[@]}"; do
    arguments+=(--grpc-restricted-protocol="$r" --http-restricted-api="$r")
done
exec "${TRITONSERVER:-tritonserver}" "${arguments[@]}" "$@"
