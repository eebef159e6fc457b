#!/usr/bin/env bash
# Run the whole test suite against real services (PostgreSQL, Docker, s3s-fs).
# Extra arguments go to `cargo nextest run`, e.g. `scripts/test.sh -E 'test(s3)'`.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

bash scripts/services.sh
# shellcheck disable=SC1091
source /var/tmp/tbw-services.env

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/tbw-target}"
export PATH="$PATH:${HOME:-/root}/.cargo/bin"

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "==> installing cargo-nextest (one time, a few minutes)"
    CARGO_TARGET_DIR=/var/tmp/nextest-target cargo install cargo-nextest --locked
fi

# Gates first: formatting and lints (the workspace's `[workspace.lints]`, warnings as errors) fail in seconds, before
# the integration tests spend minutes.
echo "==> cargo fmt --check"
cargo fmt --all --check
echo "==> cargo clippy (warnings are errors)"
# `--all-targets` includes the benchmarks (benches/, see BENCHMARKS.md): they are checked here, not run.
cargo clippy --workspace --all-targets --quiet -- -D warnings

# Each integration test makes its own database; drop those left by earlier runs.
psql -h 127.0.0.1 -U postgres -d postgres -Atc "SELECT datname FROM pg_database WHERE datname LIKE 'tbw\_test\_%'" 2>/dev/null |
    while read -r name; do psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$name\"" >/dev/null 2>&1 || true; done

cargo nextest run --workspace --no-fail-fast "$@"
# The containment tests and an oracle smoke test again under gVisor, the optional runtime operators may choose
# (`DOCKER_RUNTIME=runsc`; services.sh registers it with dockerd). The harness passes the variable to the worker.
if [ "$#" -eq 0 ]; then
    echo "==> containment tests and the oracle smoke test under gVisor (DOCKER_RUNTIME=runsc)"
    DOCKER_RUNTIME=runsc cargo nextest run --workspace --no-fail-fast \
        -E 'binary(/^containment/) | (binary(=e2e) & test(=hello_world_job_runs_every_attempt_and_records_everything))'
fi
# nextest does not run documentation examples; they are part of the docs' promise.
if [ "$#" -eq 0 ]; then
    cargo test --doc --workspace
    echo "==> cargo doc (warnings are errors)"
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
fi
