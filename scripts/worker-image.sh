#!/usr/bin/env bash
# Build the worker's container image without pulling any image: make the offline base image (scripts/base-image.sh),
# build the worker with cargo on this machine, and `docker build -f Dockerfile.offline` with a context holding only
# the binary. Idempotent: cargo and Docker reuse what is already built.
#
#   scripts/worker-image.sh                  # terminal-bench-worker:latest from a release build
#   PROFILE=dist scripts/worker-image.sh     # the shipped build: smaller binary and RSS, longer build (Cargo.toml)
#   WORKER_IMAGE=tbw:dev PROFILE=debug scripts/worker-image.sh   # quicker: the debug build, stripped
#
# CARGO_TARGET_DIR is honoured. Machines that can pull images can use `docker build .` (Dockerfile) instead.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORKER_IMAGE=${WORKER_IMAGE:-terminal-bench-worker:latest}
BASE_IMAGE=${BASE_IMAGE:-debian:bookworm-slim}
PROFILE=${PROFILE:-release}
export PATH="$PATH:${HOME:-/root}/.cargo/bin"

step() { printf '==> %s\n' "$*"; }
die() { printf 'worker-image.sh: error: %s\n' "$*" >&2; exit 1; }

case "$PROFILE" in
    release) cargo_args=(--release); out=release ;;
    dist) cargo_args=(--profile dist); out=dist ;;
    debug) cargo_args=(); out=debug ;;
    *) die "PROFILE must be release, dist or debug, got $PROFILE" ;;
esac
command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust (rustup) first"
docker info >/dev/null 2>&1 || die "no Docker daemon answers; start dockerd first (scripts/services.sh does)"

BASE_IMAGE=$BASE_IMAGE bash "$root/scripts/base-image.sh"

step "Worker: cargo build ($PROFILE)"
(cd "$root" && cargo build "${cargo_args[@]}" --locked --bin terminal-bench-worker)
target_dir=${CARGO_TARGET_DIR:-$root/target}
binary=$target_dir/$out/terminal-bench-worker
[ -x "$binary" ] || die "no binary at $binary after the build"

context=$(mktemp -d /var/tmp/tbw-image.XXXXXX)
trap 'rm -rf "$context"' EXIT
# Debug information is most of a debug build's size and is not needed to run it.
if command -v strip >/dev/null 2>&1; then
    strip -o "$context/terminal-bench-worker" "$binary"
else
    cp "$binary" "$context/terminal-bench-worker"
fi
cp "$root/Dockerfile.offline" "$context/Dockerfile"

step "Worker: docker build $WORKER_IMAGE on $BASE_IMAGE"
docker build --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$WORKER_IMAGE" "$context" >/var/tmp/tbw-worker-image.log 2>&1 \
    || { tail -n 20 /var/tmp/tbw-worker-image.log >&2; die "docker build failed; see /var/tmp/tbw-worker-image.log"; }
step "Worker: image $WORKER_IMAGE ready ($(docker image inspect -f '{{.Size}}' "$WORKER_IMAGE" | awk '{printf "%d MB", $1/1000000}'))"
