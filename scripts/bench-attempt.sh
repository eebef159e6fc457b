#!/usr/bin/env bash
# Benchmark 4 (BENCHMARKS.md): one attempt through the worker against the plain docker CLI doing the same steps on
# the same task, one attempt at a time.
#
#   scripts/bench-attempt.sh [TASK_DIR] [RUNS]        # defaults: examples/tasks/hello-world 20
#
# Worker: `terminal-bench-worker run TASK --runs RUNS --agent oracle` with MAX_CONCURRENT_ATTEMPTS_PER_JOB=1, on the
# embedded defaults (SQLite and a local artifact folder in a temporary WORKER_WORK_DIR), so no database or S3 server
# is needed. An attempt's wall time is its result.json's finished_at - started_at (environment, agent, verifier,
# artifacts, teardown; the job's image build and the upload are outside it); the worker's own share is
# timing_ms.environment_setup + timing_ms.teardown.
# Docker CLI: build the image once, then per attempt: run (sleep infinity under --init, same cpus/memory), mkdir the
# log folders, cp the solution in, run solve.sh, cp the tests in, run test.sh, cp /logs out, rm -f.
#
# Prints p50 (and p90) of each and the ratio worker / CLI. Environment:
#   TBW_BINARY   the worker binary (default target/release/terminal-bench-worker under CARGO_TARGET_DIR or ./target)
#   any worker variable, e.g. ATTEMPT_NETWORK=bridge to put the worker's containers on the CLI's network
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
task="$(cd "${1:-$repo_root/examples/tasks/hello-world}" && pwd)"
runs="${2:-20}"
binary="${TBW_BINARY:-${CARGO_TARGET_DIR:-$repo_root/target}/release/terminal-bench-worker}"
[ -x "$binary" ] || { echo "no worker binary at $binary: cargo build --release first (or set TBW_BINARY)" >&2; exit 1; }

work="$(mktemp -d /tmp/tbw-bench-attempt.XXXXXX)"
cli_image="tbw-bench-cli:$(basename "$task")"
trap 'rm -rf "$work"' EXIT

now_ms() { date +%s%3N; }

memory_mb="$(sed -n 's/^memory_mb *= *\([0-9]*\).*/\1/p' "$task/task.toml" | head -1)"
cpus="$(sed -n 's/^cpus *= *\([0-9.]*\).*/\1/p' "$task/task.toml" | head -1)"
workdir_in="$(sed -n 's/^WORKDIR *//p' "$task/environment/Dockerfile" | tail -1)"

echo "==> worker: $runs attempts of $(basename "$task"), one at a time"
# The embedded defaults: none of the platform's settings from the caller's environment.
env -u DATABASE_URL -u S3_BUCKET -u S3_REGION -u S3_ACCESS_KEY_ID -u S3_SECRET_ACCESS_KEY -u S3_ENDPOINT \
    -u OPENAI_API_KEY WORKER_WORK_DIR="$work/worker" MAX_CONCURRENT_ATTEMPTS_PER_JOB=1 OTEL_SDK_DISABLED=true \
    "$binary" run "$task" --runs "$runs" --agent oracle >"$work/worker-run.txt" 2>&1 ||
    { cat "$work/worker-run.txt" >&2; exit 1; }

echo "==> docker CLI: build once, then $runs attempts"
docker build -q -t "$cli_image" "$task/environment" >/dev/null
: >"$work/cli.txt"
for i in $(seq 1 "$runs"); do
    name="tbw-bench-cli-$$-$i"
    out="$work/cli-$i"
    mkdir -p "$out"
    start=$(now_ms)
    docker run -d --name "$name" --init --cpus "${cpus:-1}" --memory "${memory_mb:-2048}m" \
        --entrypoint sleep "$cli_image" infinity >/dev/null
    docker exec "$name" mkdir -p /logs/agent /logs/verifier "${workdir_in:-/app}"
    docker cp -q "$task/solution/." "$name:/solution"
    docker exec -w "${workdir_in:-/app}" "$name" bash -c 'bash /solution/solve.sh > /logs/agent/oracle.txt 2>&1'
    docker cp -q "$task/tests/." "$name:/tests"
    docker exec -w "${workdir_in:-/app}" "$name" bash -c 'bash /tests/test.sh > /logs/verifier/test-stdout.txt 2>&1' || true
    docker cp -q "$name:/logs" "$out/logs"
    docker rm -f -v "$name" >/dev/null
    echo $(($(now_ms) - start)) >>"$work/cli.txt"
done
docker rmi -f "$cli_image" >/dev/null 2>&1 || true

python3 - "$work" "$runs" <<'PY'
import glob, json, sys
from datetime import datetime

work, runs = sys.argv[1], int(sys.argv[2])

def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]

def when(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00"))

wall, own, setup, agent, verifier, teardown, failed = [], [], [], [], [], [], 0
for path in glob.glob(f"{work}/worker/artifacts/*/results/*/attempt-*/result.json"):
    r = json.load(open(path))
    t = r["timing_ms"]
    if r.get("exception_info") is not None:
        failed += 1
    wall.append((when(r["finished_at"]) - when(r["started_at"])).total_seconds() * 1000)
    setup.append(t["environment_setup"])
    agent.append(t["agent_execution"])
    verifier.append(t["verifier"])
    teardown.append(t["teardown"])
    own.append(t["environment_setup"] + t["teardown"])
cli = [int(line) for line in open(f"{work}/cli.txt")]
if len(wall) != runs:
    sys.exit(f"expected {runs} result.json files, found {len(wall)}")
print(f"attempts: worker {len(wall)} (failed: {failed}), docker CLI {len(cli)}")
print(f"{'':32}{'p50':>8}{'p90':>8}  (ms)")
for name, values in [("worker attempt (wall)", wall), ("docker CLI attempt (wall)", cli),
                     ("worker environment_setup", setup), ("worker agent_execution", agent),
                     ("worker verifier", verifier), ("worker teardown", teardown),
                     ("worker own share (setup+teardown)", own)]:
    print(f"{name:32}{pct(values, 50):8.0f}{pct(values, 90):8.0f}")
print(f"ratio worker / docker CLI (p50): {pct(wall, 50) / pct(cli, 50):.2f}x")
PY
