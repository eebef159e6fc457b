#!/bin/bash
# Oracle solution: write the greeting.
set -euo pipefail
echo 'Hello, world!' > /app/hello.txt
echo "wrote /app/hello.txt"
