#!/usr/bin/env bash
# Start (or install, on a fresh machine) the real services the test suite talks to:
# PostgreSQL, Docker Engine with an offline `debian:bookworm-slim` base image, an
# S3-compatible server (s3s-fs) on loopback, and pm2 (from npm). Idempotent: safe to run again and again;
# a second run only checks that everything is up.
#
# At the end the test environment variables are printed and written to
# /var/tmp/tbw-services.env (source it before running the tests).
set -euo pipefail

PG_HOST=127.0.0.1
PG_PORT=5432
S3_HOST=127.0.0.1
S3_PORT=8014
S3_ACCESS_KEY=tbw-test-access
S3_SECRET_KEY=tbw-test-secret
S3_DATA_DIR=/var/tmp/tbw-s3
S3_LOG=/var/tmp/tbw-s3.log
S3S_VERSION=0.14.1
ENV_FILE=/var/tmp/tbw-services.env
# pm2 for tests/pm2.rs, from npm into a prefix of its own: no global state, no root needed.
PM2_PREFIX=/var/tmp/tbw-npm
PM2_BIN=$PM2_PREFIX/bin/pm2

export PATH="$PATH:${HOME:-/root}/.cargo/bin:/usr/sbin:/sbin"

step() { printf '==> %s\n' "$*"; }
die() { printf 'services.sh: error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        # Unreachable third-party sources make `apt-get update` fail even though the
        # Debian mirror is fine; carry on and let the install decide.
        as_root apt-get update || echo "    (apt-get update reported errors; continuing)"
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

port_open() { # host port
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# --------------------------------------------------------------------------- PostgreSQL
pg_ready() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" >/dev/null 2>&1; }

if pg_ready; then
    step "PostgreSQL: already accepting connections on $PG_HOST:$PG_PORT"
else
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
        step "PostgreSQL: not installed, installing postgresql"
        apt_install postgresql
        # shellcheck disable=SC2012
        pg_version=$(ls /etc/postgresql | head -1)
        # Tests connect as `postgres` over TCP on loopback without a password.
        hba=/etc/postgresql/$pg_version/main/pg_hba.conf
        if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
            as_root sed -i '/^# TYPE/a host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
        fi
    fi
    # shellcheck disable=SC2012
    pg_version=$(ls /etc/postgresql | head -1)
    step "PostgreSQL: starting cluster $pg_version/main"
    as_root pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start || true
    for _ in $(seq 1 60); do
        pg_ready && break
        sleep 1
    done
    pg_ready || die "PostgreSQL did not become ready on $PG_HOST:$PG_PORT"
    step "PostgreSQL: ready"
fi

# --------------------------------------------------------------------------- Docker
missing_pkgs=()
command -v dockerd >/dev/null 2>&1 || missing_pkgs+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing_pkgs+=(debootstrap)
command -v bwrap >/dev/null 2>&1 || missing_pkgs+=(bubblewrap)
# mkfs.xfs: tests/common/dockerd.rs puts a test-owned daemon's data on a small XFS image (disk-filler tests).
command -v mkfs.xfs >/dev/null 2>&1 || missing_pkgs+=(xfsprogs)
# The worker firewalls attempt networks with iptables/ip6tables; tests/containment_network.rs reads the rules and
# finds docker0's address with ip.
command -v iptables >/dev/null 2>&1 || missing_pkgs+=(iptables)
command -v ip >/dev/null 2>&1 || missing_pkgs+=(iproute2)
# The image tests start their own registry process (own config, storage and loopback port); the package's service,
# if the init system starts it, plays no part.
command -v docker-registry >/dev/null 2>&1 || missing_pkgs+=(docker-registry)
# jq edits /etc/docker/daemon.json (address pools below, the runsc runtime further down).
command -v jq >/dev/null 2>&1 || missing_pkgs+=(jq)
if [ "${#missing_pkgs[@]}" -gt 0 ]; then
    step "Docker: installing ${missing_pkgs[*]}"
    apt_install "${missing_pkgs[@]}"
else
    step "Docker: docker.io, debootstrap, bubblewrap, xfsprogs, iptables, iproute2, docker-registry and jq are installed"
fi

# Every isolated attempt gets a bridge network of its own (ATTEMPT_NETWORK=isolated). Docker's default address pools
# hold about 30 networks, fewer than 5 jobs x 10 attempts; /24 networks from one /16 give 256. Written only when
# daemon.json names no pools (an operator's own choice stays); dockerd reads them at start, not on SIGHUP.
POOLS='[{"base":"10.213.0.0/16","size":24}]'
daemon_json=/etc/docker/daemon.json
current='{}'
[ -s "$daemon_json" ] && current=$(cat "$daemon_json")
jq -e . >/dev/null 2>&1 <<<"$current" || die "$daemon_json is not valid JSON; fix it and run again"
if ! jq -e 'has("default-address-pools")' >/dev/null <<<"$current"; then
    step "Docker: address pools for attempt networks in $daemon_json ($POOLS)"
    as_root mkdir -p /etc/docker
    jq --argjson pools "$POOLS" '."default-address-pools" = $pools' <<<"$current" | as_root tee "$daemon_json.tmp" >/dev/null
    as_root mv "$daemon_json.tmp" "$daemon_json"
    if docker info >/dev/null 2>&1; then
        step "Docker: NOTE the running dockerd keeps its old pools until it is restarted"
    fi
fi

if docker info >/dev/null 2>&1; then
    step "Docker: daemon is running"
else
    step "Docker: starting dockerd (log: /var/log/dockerd.log)"
    as_root bash -c 'nohup setsid dockerd >>/var/log/dockerd.log 2>&1 </dev/null &'
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || die "dockerd did not come up within 60 s; see /var/log/dockerd.log"
    step "Docker: daemon is running"
fi

# --------------------------------------------------------------------------- gVisor (runsc)
# The optional sandboxed runtime (`DOCKER_RUNTIME=runsc`); the containment tests run a second time with it. Registered
# with dockerd under the name `runsc`, merged into whatever /etc/docker/daemon.json already holds, and loaded with
# SIGHUP: `runtimes` is one of the settings dockerd reloads without a restart, so running containers are untouched.
# `--network=host` makes runsc use the network namespace Docker prepared for the container (its own network, the
# worker's firewall rules) instead of gVisor's user-space network stack; on the CI machine runsc runs under Docker only
# with it. `--overlay2=none` keeps writes inside the container in the container's own writable layer:
# newer runsc releases default to an in-sandbox overlay whose files neither `docker cp` nor the worker's archive
# copies of /logs can see.
RUNSC_ARGS='["--network=host","--overlay2=none"]'
missing_pkgs=()
command -v runsc >/dev/null 2>&1 || missing_pkgs+=(runsc)
if [ "${#missing_pkgs[@]}" -gt 0 ]; then
    step "gVisor: installing ${missing_pkgs[*]}"
    apt_install "${missing_pkgs[@]}"
fi
runsc_path=$(command -v runsc)
current='{}'
[ -s "$daemon_json" ] && current=$(cat "$daemon_json")
wanted=$(jq --arg path "$runsc_path" --argjson args "$RUNSC_ARGS" \
    '.runtimes.runsc = {path: $path, runtimeArgs: $args}' <<<"$current") ||
    die "$daemon_json is not valid JSON; fix it and run again"
if [ "$(jq -S . <<<"$current")" != "$(jq -S . <<<"$wanted")" ]; then
    step "gVisor: registering runsc in $daemon_json"
    as_root mkdir -p /etc/docker
    printf '%s\n' "$wanted" | as_root tee "$daemon_json.tmp" >/dev/null
    as_root mv "$daemon_json.tmp" "$daemon_json"
fi
runsc_listed() { docker info --format '{{json .Runtimes}}' 2>/dev/null | jq -e 'has("runsc")' >/dev/null 2>&1; }
runsc_current() {
    docker info --format '{{json .Runtimes}}' 2>/dev/null |
        jq -e --argjson args "$RUNSC_ARGS" '.runsc.runtimeArgs == $args' >/dev/null 2>&1
}
if runsc_listed && runsc_current; then
    step "gVisor: dockerd lists the runsc runtime"
else
    step "gVisor: asking dockerd to reload its configuration (SIGHUP; containers keep running)"
    dockerd_pid=$(cat /var/run/docker.pid 2>/dev/null || pidof dockerd) || die "dockerd runs but its pid is unknown"
    as_root kill -HUP "$dockerd_pid"
    for _ in $(seq 1 30); do
        runsc_listed && runsc_current && break
        sleep 1
    done
    runsc_listed && runsc_current || die "dockerd does not list the runsc runtime after a reload; see /var/log/dockerd.log"
    step "gVisor: dockerd lists the runsc runtime"
fi

# --------------------------------------------------------------------------- base image
bash "$(dirname "${BASH_SOURCE[0]}")/base-image.sh"

# --------------------------------------------------------------------------- S3 (s3s-fs)
if command -v s3s-fs >/dev/null 2>&1; then
    step "S3: s3s-fs is installed ($(command -v s3s-fs))"
else
    step "S3: installing s3s-fs $S3S_VERSION with cargo (about 2 minutes)"
    command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust (rustup) first"
    CARGO_TARGET_DIR=/var/tmp/s3s-target cargo install "s3s-fs@$S3S_VERSION" --features binary --locked
    command -v s3s-fs >/dev/null 2>&1 || die "s3s-fs still not on PATH after cargo install"
fi

if port_open "$S3_HOST" "$S3_PORT"; then
    step "S3: something already listens on $S3_HOST:$S3_PORT"
else
    step "S3: starting s3s-fs on $S3_HOST:$S3_PORT (data: $S3_DATA_DIR, log: $S3_LOG)"
    mkdir -p "$S3_DATA_DIR"
    # Started from its data folder: s3s-fs resolves some paths against its working folder, and a checkout it was
    # started from may be deleted while it keeps running (it then answers InternalError to everything).
    s3s_bin=$(command -v s3s-fs)
    (
        cd "$S3_DATA_DIR"
        nohup setsid "$s3s_bin" --host "$S3_HOST" --port "$S3_PORT" \
            --access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY" "$S3_DATA_DIR" \
            >>"$S3_LOG" 2>&1 </dev/null &
    )
    for _ in $(seq 1 30); do
        port_open "$S3_HOST" "$S3_PORT" && break
        sleep 1
    done
    port_open "$S3_HOST" "$S3_PORT" || die "s3s-fs did not start listening; see $S3_LOG"
    step "S3: s3s-fs is listening"
fi

# --------------------------------------------------------------------------- pm2
if [ -x "$PM2_BIN" ]; then
    step "pm2: installed ($PM2_BIN)"
else
    command -v npm >/dev/null 2>&1 || apt_install nodejs npm
    step "pm2: installing from npm into $PM2_PREFIX"
    # The machine's npm configuration (registry, proxy) applies.
    npm install --global --prefix "$PM2_PREFIX" --no-fund --no-audit pm2
    [ -x "$PM2_BIN" ] || die "pm2 is not at $PM2_BIN after npm install"
fi

# --------------------------------------------------------------------------- environment
cat >"$ENV_FILE" <<EOF
export TBW_TEST_DATABASE_URL=postgres://postgres@$PG_HOST:$PG_PORT/postgres
export TBW_TEST_S3_ENDPOINT=http://$S3_HOST:$S3_PORT
export TBW_TEST_S3_ACCESS_KEY_ID=$S3_ACCESS_KEY
export TBW_TEST_S3_SECRET_ACCESS_KEY=$S3_SECRET_KEY
export TBW_TEST_S3_REGION=us-east-1
export TBW_TEST_PM2=$PM2_BIN
EOF
step "Services ready. Test environment (also in $ENV_FILE):"
sed 's/^/    /' "$ENV_FILE"
