#!/bin/bash
# Oracle solution: write the calc module.
set -euo pipefail
cat > /app/calc.py <<'PY'
"""Tiny arithmetic module."""


def add(a, b):
    return a + b


def mul(a, b):
    return a * b
PY
echo "wrote /app/calc.py"
