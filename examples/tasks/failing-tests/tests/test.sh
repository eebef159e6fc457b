#!/bin/bash
# Verifier for failing-tests: plain bash, no packages needed.
# Writes /logs/verifier/reward.txt (1 or 0) and /logs/verifier/ctrf.json.
set -u

if [ "$PWD" = "/" ]; then
    echo "Error: no working directory set; refusing to run the tests from /." >&2
    echo "Set WORKDIR in the task's Dockerfile." >&2
    exit 1
fi

mkdir -p /logs/verifier
TARGET=/app/greeting.txt
EXPECTED='Good morning!'

names=(); statuses=(); messages=()
record() { # name status message
    names+=("$1"); statuses+=("$2"); messages+=("$3")
    if [ "$2" = passed ]; then echo "PASSED $1"; else echo "FAILED $1: $3"; fi
}
json_escape() {
    local s=$1
    s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\n'/\\n}; s=${s//$'\r'/\\r}; s=${s//$'\t'/\\t}
    printf '%s' "$s"
}

# Test 1: the file exists.
if [ -f "$TARGET" ]; then
    record test_greeting_file_exists passed ""
else
    record test_greeting_file_exists failed "$TARGET does not exist"
fi

# Test 2: the content matches (one trailing newline allowed).
if [ -f "$TARGET" ] && [ "$(cat "$TARGET")" = "$EXPECTED" ]; then
    record test_greeting_file_content passed ""
else
    actual=$(head -c 200 "$TARGET" 2>/dev/null || true)
    record test_greeting_file_content failed "expected '$EXPECTED', got '$actual'"
fi

total=${#names[@]}; passed=0; failed=0; tests_json=""
for i in "${!names[@]}"; do
    if [ "${statuses[$i]}" = passed ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
    entry="{\"name\":\"$(json_escape "${names[$i]}")\",\"status\":\"${statuses[$i]}\",\"duration\":0"
    if [ -n "${messages[$i]}" ]; then entry+=",\"message\":\"$(json_escape "${messages[$i]}")\""; fi
    entry+="}"
    tests_json+="${tests_json:+,}$entry"
done
cat > /logs/verifier/ctrf.json <<JSON
{"results":{"tool":{"name":"bash"},"summary":{"tests":$total,"passed":$passed,"failed":$failed,"skipped":0,"pending":0,"other":0,"start":0,"stop":0},"tests":[$tests_json]}}
JSON

if [ "$failed" -eq 0 ] && [ "$total" -gt 0 ]; then reward=1; else reward=0; fi
echo "$reward" > /logs/verifier/reward.txt
echo "$passed/$total tests passed; reward $reward"
