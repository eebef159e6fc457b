#!/usr/bin/env bash
# The README's first command: run the example task here, with nothing configured (SQLite and a local
# artifact folder). `run` needs somewhere to run the task's scripts, which are never run as plain
# host processes: a Docker daemon, or a bubblewrap sandbox. When neither is usable this installs
# bubblewrap (the lighter of the two; Debian or Ubuntu, with apt), then starts the run.
#
#   scripts/quickstart.sh                        # the example task, 3 runs
#   scripts/quickstart.sh path/to/task --runs 5  # arguments replace the example's
set -euo pipefail

BASE_IMAGE=debian:bookworm-slim

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
export PATH="$PATH:${HOME:-/root}/.cargo/bin:/usr/sbin:/sbin"

step() { printf '==> %s\n' "$*"; }
die() { printf 'quickstart.sh: error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

docker_usable() {
    command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1
}

# The same kind of sandbox the worker starts: every namespace private but the network.
bwrap_usable() {
    command -v bwrap >/dev/null 2>&1 &&
        bwrap --ro-bind / / --proc /proc --dev /dev --unshare-all --share-net --die-with-parent \
            --new-session /usr/bin/true >/dev/null 2>&1
}

command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust first (rustup)"

if docker_usable; then
    step "Runtime: Docker daemon is reachable"
    if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        step "Runtime: $BASE_IMAGE is not present; pulling it"
        if ! timeout 120 docker pull "$BASE_IMAGE"; then
            step "Runtime: the pull failed (no registry reachable?); building $BASE_IMAGE offline instead"
            bash scripts/base-image.sh
        fi
    fi
elif bwrap_usable; then
    step "Runtime: no Docker daemon; bubblewrap works here, so tasks run in its sandbox"
else
    step "Runtime: neither a Docker daemon nor a working bubblewrap; installing bubblewrap"
    command -v apt-get >/dev/null 2>&1 ||
        die "no apt-get here: install bubblewrap (or start Docker) with this system's package manager"
    # Unreachable third-party sources make `apt-get update` fail even though the distribution's
    # mirror is fine; carry on and let the install decide.
    as_root apt-get update || echo "    (apt-get update reported errors; continuing)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y bubblewrap
    bwrap_usable || die "bubblewrap is installed but cannot create a sandbox here (are user namespaces" \
        "disabled?); start Docker instead: scripts/services.sh installs and starts it on Debian"
    step "Runtime: bubblewrap installed and working"
fi

if [ "$#" -eq 0 ]; then
    set -- examples/tasks/hello-world --runs 3
fi
step "cargo run --release -- run $*"
exec cargo run --release -- run "$@"
