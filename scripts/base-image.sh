#!/usr/bin/env bash
# Make the `debian:bookworm-slim` image that task Dockerfiles build on, without pulling: where images cannot be pulled
# (as on the development machines), debootstrap a minimal Debian from the mirror this machine's apt already uses and
# import it into Docker, with the host's CA bundle inside so HTTPS works in task containers. About a minute.
# Idempotent: does nothing when the image is present. Needs a running Docker daemon; installs debootstrap if missing.
# Used by scripts/services.sh (tests) and scripts/quickstart.sh (the README's first command).
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-debian:bookworm-slim}
export PATH="$PATH:/usr/sbin:/sbin"

step() { printf '==> %s\n' "$*"; }
die() { printf 'base-image.sh: error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# The Debian mirror this machine's apt already uses, so no package host is written into the repository.
# Reads one-line `deb URL SUITE ...` entries and deb822 `.sources` files; $1 picks the archive:
# `main` (the release itself) or `security` (a `*-security` suite). Prints nothing when none is configured.
apt_mirror() { # main|security
    local want=$1 f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v want="$want" '
            function pick(uris, suites,   n, i, j, m, s, u) {
                n = split(suites, s, /[ \t]+/)
                for (i = 1; i <= n; i++) {
                    if (s[i] == "" || (want == "security") != (s[i] ~ /-security$/)) continue
                    m = split(uris, u, /[ \t]+/)
                    for (j = 1; j <= m; j++) if (u[j] ~ /^https?:\/\//) { print u[j]; return }
                }
            }
            function flush() { if (enabled && uris != "" && suites != "") pick(uris, suites); uris = ""; suites = ""; enabled = 1 }
            BEGIN { enabled = 1 }
            /^[ \t]*#/ { next }
            /^deb[ \t]/ { line = $0; sub(/\[[^]]*\]/, "", line); split(line, f, /[ \t]+/); pick(f[2], f[3]); next }
            /^URIs:/ { uris = $0; sub(/^URIs:[ \t]*/, "", uris) }
            /^Suites:/ { suites = $0; sub(/^Suites:[ \t]*/, "", suites) }
            /^Enabled:[ \t]*[Nn]o/ { enabled = 0 }
            /^[ \t]*$/ { flush() }
            END { flush() }
        ' "$f"
    done | head -n 1
}

docker info >/dev/null 2>&1 || die "no Docker daemon answers; start dockerd first (scripts/services.sh does)"

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 && ! command -v debootstrap >/dev/null 2>&1; then
    step "Base image: installing debootstrap"
    as_root apt-get update || echo "    (apt-get update reported errors; continuing)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap
fi

if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    step "Base image: $BASE_IMAGE present"
else
    step "Base image: building $BASE_IMAGE offline with debootstrap (about a minute)"
    DEBIAN_MIRROR=$(apt_mirror main)
    DEBIAN_SECURITY=$(apt_mirror security)
    [ -n "$DEBIAN_MIRROR" ] || die "no Debian mirror in /etc/apt/sources.list or /etc/apt/sources.list.d/; debootstrap needs one"
    step "Base image: using this machine's Debian mirror $DEBIAN_MIRROR"
    started=$(date +%s)
    rootfs=$(mktemp -d /var/tmp/tbw-rootfs.XXXXXX)
    trap 'as_root rm -rf "$rootfs"' EXIT
    as_root debootstrap --variant=minbase bookworm "$rootfs" "$DEBIAN_MIRROR" >/var/tmp/tbw-debootstrap.log 2>&1 \
        || die "debootstrap failed; see /var/tmp/tbw-debootstrap.log"
    # Host CA bundle, so HTTPS (pip, curl) works inside task containers.
    as_root mkdir -p "$rootfs/etc/ssl/certs"
    as_root cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    {
        echo "deb $DEBIAN_MIRROR bookworm main"
        echo "deb $DEBIAN_MIRROR bookworm-updates main"
        if [ -n "$DEBIAN_SECURITY" ]; then echo "deb $DEBIAN_SECURITY bookworm-security main"; fi
    } | as_root tee "$rootfs/etc/apt/sources.list" >/dev/null
    as_root rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/archives/partial/* \
        "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* "$rootfs"/tmp/* "$rootfs"/var/tmp/*
    as_root mkdir -p "$rootfs/var/lib/apt/lists/partial"
    as_root tar -C "$rootfs" -c . | docker import --change 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
    as_root rm -rf "$rootfs"
    trap - EXIT
    step "Base image: $BASE_IMAGE imported in $(( $(date +%s) - started )) s"
fi

