#!/usr/bin/env bash
# Rerun every benchmark behind the README's table, one after the other (they compete for the CPU otherwise),
# and keep each script's printed figures under bench/out/. Needs `pip install -e '.[test,bench]'` and, for the
# Postgres halves, a server at ERRORBOOK_BENCH_POSTGRES_URL / postgresql://postgres@127.0.0.1:5432/test.
# Takes about 12 minutes on a quiet 2-core machine (much longer when other programs share the cores).
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/out
python=${PYTHON:-python}
status=0
for bench in "ingest.py" "split.py" "split_logic.py" "train.py" "label_noise.py --seeds 10" "active_learning.py --seeds 5" "jobs.py" "pages.py" "load.py"; do
  name=${bench%%.py*}
  echo "== bench/$bench ($(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg))"
  # shellcheck disable=SC2086
  $python bench/$bench 2>&1 | tee "bench/out/$name.txt" || status=1
done
exit $status
