#!/usr/bin/env bash
# Sets everything up, generates a realistic brain MR study (localizer, T1, T1 post-contrast,
# T2, FLAIR and a structured report) and runs operator mode on it, printing the selection.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
seriesflow() { "$PWD/.venv/bin/seriesflow" "$@"; }
rm -rf sample-input sample-output
seriesflow sample brain-mr --output sample-input
seriesflow process --input sample-input --output sample-output \
  --rules examples/rules/clara-t1c.json --format nii.gz
echo
echo "selected-images.json:"
cat sample-output/selected-images.json
echo
