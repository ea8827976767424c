#!/usr/bin/env bash
# Pilot -> plan -> check on the embedded default, offline on a CPU:
#   1. the pilot: the default study (ranks 1, 4, 16, 64, two seeds, 100 steps; resumed or only
#      re-analysed if ./forgetscale-study already holds it),
#   2. the plan: the rank (2, 8, 32 or 128: none of them in the pilot) and steps (100, 200
#      or 300) with the lowest predicted L_ft whose L_f stays within 1.15 of the base's at
#      the upper end of the 90% interval for a new run,
#   3. the check: the chosen configuration trained (./forgetscale-plan/planned.db) and its
#      L_ft and L_f compared with their intervals, with its time beside the pilot's.
# Re-running resumes whatever was interrupted. Extra arguments go to `forgetscale plan`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/forgetscale study --out forgetscale-study
mkdir -p forgetscale-plan
exec .venv/bin/forgetscale plan --from forgetscale-study --budget "forgetting_loss<=+1.15" \
    --ranks 2 8 32 128 --steps 100 200 300 --verify forgetscale-plan/planned.db "$@"
