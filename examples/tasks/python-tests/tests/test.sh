#!/bin/bash
# Verifier for python-tests: runs pytest, converts its JUnit XML report to CTRF,
# writes /logs/verifier/reward.txt (1 if every test passed, else 0) and ctrf.json.
set -u

if [ "$PWD" = "/" ]; then
    echo "Error: no working directory set; refusing to run the tests from /." >&2
    echo "Set WORKDIR in the task's Dockerfile." >&2
    exit 1
fi

mkdir -p /logs/verifier
rm -f /logs/verifier/junit.xml

python3 -m pytest /tests/test_outputs.py -rA --junitxml=/logs/verifier/junit.xml
pytest_status=$?
echo "pytest exited with status $pytest_status"

python3 - "$pytest_status" <<'PY'
"""Convert pytest's JUnit XML to CTRF JSON and write the reward."""
import json
import sys
import xml.etree.ElementTree as ET

JUNIT = "/logs/verifier/junit.xml"
pytest_status = int(sys.argv[1])
tests = []
try:
    root = ET.parse(JUNIT).getroot()
except (OSError, ET.ParseError) as exc:
    root = None
    print(f"could not read {JUNIT}: {exc}")

for case in (root.iter("testcase") if root is not None else []):
    name = case.get("name", "?")
    classname = case.get("classname")
    entry = {
        "name": name,
        "status": "passed",
        "duration": int(round(float(case.get("time") or 0) * 1000)),
    }
    if classname:
        entry["suite"] = classname
    for tag, status in (("failure", "failed"), ("error", "failed"), ("skipped", "skipped")):
        node = case.find(tag)
        if node is not None:
            entry["status"] = status
            message = node.get("message") or ""
            if message:
                entry["message"] = message
            if node.text and status == "failed":
                entry["trace"] = node.text
            break
    tests.append(entry)

summary = {
    "tests": len(tests),
    "passed": sum(t["status"] == "passed" for t in tests),
    "failed": sum(t["status"] == "failed" for t in tests),
    "skipped": sum(t["status"] == "skipped" for t in tests),
    "pending": 0,
    "other": 0,
    "start": 0,
    "stop": 0,
}
ctrf = {"results": {"tool": {"name": "pytest"}, "summary": summary, "tests": tests}}
with open("/logs/verifier/ctrf.json", "w") as f:
    json.dump(ctrf, f, indent=2)

ok = pytest_status == 0 and summary["tests"] > 0 and summary["passed"] == summary["tests"]
with open("/logs/verifier/reward.txt", "w") as f:
    f.write("1\n" if ok else "0\n")
print(f"{summary['passed']}/{summary['tests']} tests passed; reward {1 if ok else 0}")
PY

# If the conversion could not run at all, still leave a reward behind.
[ -s /logs/verifier/reward.txt ] || echo 0 > /logs/verifier/reward.txt
