#!/bin/bash
# Oracle solution, deliberately WRONG: the file exists but holds the wrong greeting,
# so one of the two tests fails and the reward is 0.
set -euo pipefail
echo 'Good evening!' > /app/greeting.txt
echo "wrote /app/greeting.txt (with the wrong content, on purpose)"
