#!/usr/bin/env bash
# Build the CPU image (deploy/images/Dockerfile.cpu) and run it as a user of the image would:
# serve a model repository from it (read-only; REPOSITORY, default model_repository), score
# RECORDS (default examples/sessions.jsonl) through it from here, ask its health command, stop
# it. `make image-check`; tests/integration/test_image.py. Needs podman, buildah and debootstrap
# (Debian packages) and root.
#
# Where the python base image cannot be pulled, a Debian bookworm base with its Python 3.11 is
# made with debootstrap instead (with this machine's CA certificates, for its HTTPS proxy).
# The image runs under `buildah run --isolation chroot` (no OCI runtime needed): the server
# starts with --detach and is stopped with `ubm-serve stop`.
set -euo pipefail
cd "$(dirname "$0")/.."

base="${PYTHON_IMAGE:-python:3.11-slim-bookworm}"
image="ubm-cpu:check"
bin="${BIN:-.venv/bin}"
repository="$(realpath "${REPOSITORY:-model_repository}")"
records="${RECORDS:-examples/sessions.jsonl}"

if ! podman image exists "$base" && ! podman pull -q "$base" >/dev/null 2>&1; then
    echo "image-check: cannot pull $base; using a debootstrap Debian bookworm base" >&2
    base=localhost/ubm-python-base:bookworm
    if ! podman image exists "$base"; then
        rootfs="$(mktemp -d)"
        debootstrap --variant=minbase --include=python3,python3-venv,libpython3.11,ca-certificates \
            bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
        ln -sf python3 "$rootfs/usr/bin/python"
        cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
        tar -C "$rootfs" -c . | podman import - "$base" >/dev/null
        rm -rf "$rootfs"
    fi
fi

podman build --isolation=chroot -f deploy/images/Dockerfile.cpu --build-arg PYTHON_IMAGE="$base" \
    -t "$image" .
echo "image-check: built $image ($(podman image inspect "$image" --format '{{.Size}}') bytes)"

read -r grpc http metrics < <("$bin/python" -c \
    "from ubm_build.serving.settings import free_port as f; print(f(), f(), f())")
work="$(mktemp -d)"
mkdir -p "$work/run" "$work/tmp"
chown 10001:10001 "$work/run" "$work/tmp"
container="$(buildah from "$image")"
run() {
    buildah run --isolation chroot --network host --user 10001:10001 \
        -e UBM_GRPC_PORT="$grpc" -e UBM_HTTP_PORT="$http" -e UBM_METRICS_PORT="$metrics" \
        -v "$repository:/models:ro" -v "$work/run:/run/ubm" -v "$work/tmp:/tmp" \
        "$container" -- "$@"
}
cleanup() {
    run ubm-serve stop --run-dir /run/ubm || true
    buildah rm "$container" >/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

run ubm-serve serve --host 0.0.0.0 --repository /models --run-dir /run/ubm --detach
run ubm-serve health
"$bin/ubm-client" score "$records" --url "localhost:$grpc" -o "$work/scores.jsonl" -q
echo "image-check: $(wc -l < "$work/scores.jsonl") of $(wc -l < "$records") records scored by the image"
