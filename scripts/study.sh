#!/usr/bin/env bash
# The main job in one command: install (if needed) into ./.venv, then run the default
# forgetting study on the embedded default, offline on a CPU, and print the report's path.
#   bash scripts/study.sh              # the default study (./forgetscale-study/report.html)
#   bash scripts/study.sh quick        # a first look in a few minutes
# Any other arguments go to `forgetscale study` (e.g. --executor slurm). Re-running resumes
# an interrupted study; a finished one is only re-analysed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/forgetscale study "$@"
