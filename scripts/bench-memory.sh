#!/usr/bin/env bash
# Benchmark 5 (BENCHMARKS.md): the worker daemon's resident memory (VmRSS) idle and with 50 attempts in flight, and,
# side by side, the platform's original TypeScript worker idle on the same database.
#
#   scripts/bench-memory.sh            # the Rust worker, then the TypeScript worker
#   scripts/bench-memory.sh rust       # only the Rust worker
#   scripts/bench-memory.sh ts         # only the TypeScript worker
#
# Needs PostgreSQL, Docker and an S3-compatible server (scripts/services.sh starts them; their addresses come from
# /var/tmp/tbw-services.env or the TBW_TEST_* variables), and a release build (TBW_BINARY, default
# target/release/terminal-bench-worker under CARGO_TARGET_DIR or ./target). Each run makes its own database and
# bucket and drops the database afterwards.
#
# Rust worker: `worker` started on the fresh database; idle RSS is read 20 s after start (migrations, first polls and
# the start-up sweep done). Then a job of 50 runs of a task whose solution sleeps 90 s (no network, so no per-attempt
# bridge networks) is submitted with MAX_CONCURRENT_ATTEMPTS_PER_JOB=50; RSS is sampled every second while its 50
# containers run, and the peak is printed. The job is then cancelled and the worker stopped (SIGTERM).
#
# TypeScript worker: diegovalduran/terminal-bench-platform's worker/ (checked out to TS_WORKER_DIR, default
# /var/tmp/tbw-ts-worker, from TS_WORKER_SRC, a clone of that repository, on the first run), `npm install`,
# `npm run build`, then `node dist/worker.js` on the same kind of fresh database; idle RSS after 20 s. It runs every
# attempt through Harbor's Python CLI (`harbor run`) and reads tasks from AWS S3 without an endpoint override, so it
# cannot run attempts here; AWS_ENDPOINT_URL points its SDK at the local server all the same, so nothing leaves the
# host.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
which="${1:-all}"
[ -f /var/tmp/tbw-services.env ] && source /var/tmp/tbw-services.env
admin_url="${TBW_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
s3_endpoint="${TBW_TEST_S3_ENDPOINT:-http://127.0.0.1:8014}"
s3_key="${TBW_TEST_S3_ACCESS_KEY_ID:?set TBW_TEST_S3_ACCESS_KEY_ID}"
s3_secret="${TBW_TEST_S3_SECRET_ACCESS_KEY:?set TBW_TEST_S3_SECRET_ACCESS_KEY}"
s3_region="${TBW_TEST_S3_REGION:-us-east-1}"
binary="${TBW_BINARY:-${CARGO_TARGET_DIR:-$repo_root/target}/release/terminal-bench-worker}"
idle_wait="${IDLE_WAIT_SECS:-20}"
in_flight="${IN_FLIGHT:-50}"

work="$(mktemp -d /tmp/tbw-bench-memory.XXXXXX)"
databases=()
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    for db in "${databases[@]}"; do
        psql "$admin_url" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

# A fresh database and bucket; sets db_url and bucket.
fresh() {
    local name
    name="tbw_bench_mem_$(date +%s)_$RANDOM"
    psql "$admin_url" -qc "CREATE DATABASE \"$name\"" >/dev/null
    databases+=("$name")
    db_url="${admin_url%/*}/$name"
    bucket="tbw-bench-mem-$RANDOM$RANDOM"
    curl -sf -X PUT --aws-sigv4 "aws:amz:$s3_region:s3" --user "$s3_key:$s3_secret" \
        -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$s3_endpoint/$bucket" >/dev/null ||
        { echo "could not create bucket $bucket at $s3_endpoint" >&2; exit 1; }
}

platform_env() {
    export DATABASE_URL="$db_url" S3_BUCKET="$bucket" S3_REGION="$s3_region" S3_ENDPOINT="$s3_endpoint"
    export S3_ACCESS_KEY_ID="$s3_key" S3_SECRET_ACCESS_KEY="$s3_secret"
}

rust_worker() {
    [ -x "$binary" ] || { echo "no worker binary at $binary: cargo build --release first (or set TBW_BINARY)" >&2; exit 1; }
    fresh
    (
        platform_env
        "$binary" migrate >/dev/null
        cd "$work"
        OTEL_SDK_DISABLED=true MAX_CONCURRENT_ATTEMPTS_PER_JOB="$in_flight" WORKER_POLL_INTERVAL_MS=1000 \
            WORKER_WORK_DIR="$work/rust" LOG_LEVEL=warn exec "$binary" worker >"$work/rust.log" 2>&1
    ) &
    local pid=$!
    pids+=("$pid")
    sleep "$idle_wait"
    # The subshell execs the worker, so $pid is the worker itself.
    local idle
    idle=$(rss_kib "$pid")
    echo "rust worker idle:                  $(mib "$idle") MiB VmRSS (pid $pid, after ${idle_wait}s)"
    grep -E '^(RssAnon|RssFile|Threads)' "/proc/$pid/status" | tr -s '\t ' ' ' | sed 's/^/    /'

    # A task that holds its container for 90 s, without network.
    local task="$work/sleepy"
    mkdir -p "$task/environment" "$task/solution" "$task/tests"
    printf '[environment]\nallow_internet = false\nmemory_mb = 128\n' >"$task/task.toml"
    printf 'FROM debian:bookworm-slim\nWORKDIR /app\n' >"$task/environment/Dockerfile"
    printf 'Sleep.\n' >"$task/instruction.md"
    printf '#!/bin/bash\nsleep 90\ntouch /app/done\n' >"$task/solution/solve.sh"
    printf '#!/bin/bash\nmkdir -p /logs/verifier\n[ -f /app/done ] && echo 1 >/logs/verifier/reward.txt || echo 0 >/logs/verifier/reward.txt\n' >"$task/tests/test.sh"
    local job
    job=$( (platform_env; "$binary" submit "$task" --runs "$in_flight" --agent oracle) | grep -oE '[0-9a-f]{8}-[0-9a-f-]{27}' | head -1)
    [ -n "$job" ] || { echo "could not submit the job" >&2; exit 1; }
    local peak=0 running=0 seen=0 now
    for _ in $(seq 1 180); do
        sleep 1
        now=$(rss_kib "$pid")
        [ "$now" -gt "$peak" ] && peak=$now
        running=$(docker ps -q --filter "label=dev.terminal-bench-worker.job-id=$job" | wc -l)
        [ "$running" -gt "$seen" ] && seen=$running
        # Keep sampling a while after the last container started.
        if [ "$seen" -ge "$in_flight" ]; then
            for _ in $(seq 1 15); do
                sleep 1
                now=$(rss_kib "$pid")
                [ "$now" -gt "$peak" ] && peak=$now
            done
            break
        fi
    done
    echo "rust worker, $seen attempts in flight: $(mib "$peak") MiB peak VmRSS (sampled every second)"
    (platform_env; "$binary" cancel "$job" >/dev/null) || true
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    echo "    (job $job cancelled, worker stopped)"
}

ts_worker() {
    local dir="${TS_WORKER_DIR:-/var/tmp/tbw-ts-worker}"
    if [ ! -f "$dir/package.json" ]; then
        local src="${TS_WORKER_SRC:?set TS_WORKER_SRC to a clone of diegovalduran/terminal-bench-platform}"
        mkdir -p "$dir"
        git -C "$src" archive HEAD worker | tar -x -C "$dir" --strip-components=1
    fi
    if [ ! -f "$dir/dist/worker.js" ]; then
        (cd "$dir" && npm install --no-audit --no-fund --loglevel=error >/dev/null && npm run -s build >/dev/null)
    fi
    fresh
    (platform_env; "$binary" migrate >/dev/null)
    (
        platform_env
        cd "$dir"
        # Its S3 client has no endpoint setting; the SDK's AWS_ENDPOINT_URL keeps it on this host.
        AWS_ENDPOINT_URL="$s3_endpoint" NODE_ENV=production WORKER_POLL_INTERVAL_MS=5000 \
            exec node dist/worker.js >"$work/ts.log" 2>&1
    ) &
    local pid=$!
    pids+=("$pid")
    sleep "$idle_wait"
    local idle
    idle=$(rss_kib "$pid")
    if [ "$idle" = 0 ]; then
        echo "the TypeScript worker is not running; its log:" >&2
        cat "$work/ts.log" >&2
        return 1
    fi
    echo "typescript worker idle:            $(mib "$idle") MiB VmRSS (pid $pid, node $(node --version), after ${idle_wait}s)"
    grep -E '^(RssAnon|RssFile|Threads)' "/proc/$pid/status" | tr -s '\t ' ' ' | sed 's/^/    /'
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

case "$which" in
    rust) rust_worker ;;
    ts) ts_worker ;;
    all) rust_worker; ts_worker ;;
    *) echo "usage: $0 [rust|ts|all]" >&2; exit 2 ;;
esac
