#!/usr/bin/env bash
# One call on a CUDA machine (the project's `device` tool): train one ACDC config (CONFIG, e.g.
# configs/acdc_contrast_wide.yaml) with its batches augmented in WORKERS processes, stopping
# cleanly (train.max_minutes) before LIMIT_S seconds. Carried: .gpu/site.zip and .gpu/acdc (see
# acdc_cv_gpu.sh). Back in $OUT: train.log, config.yaml, metrics.csv, summary.json, final.pt and,
# when the schedule did not finish, last.pt in 15 MB parts, to resume here:
#   mkdir -p runs/NAME && cat last.pt.part-* > runs/NAME/last.pt && cardioseg train -c CONFIG
# Status: written and tried on the CPU with a tiny schedule (2026-11-30); not yet run on a GPU (the
# second call of that session was refused: no machine was lent).
set -u
T0=$(date +%s)
LIMIT_S=${LIMIT_S:-250}
WORKERS=${WORKERS:-12}
python3 -m zipfile -e .gpu/site.zip /tmp/site
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
python3 benchmarks/device/acdc_pack.py unpack .gpu/acdc /tmp/data/acdc
sed -e 's#../shared/data/acdc#/tmp/data/acdc#' -e 's#cache_dir: cache#cache_dir: /tmp/cache#' \
    "$CONFIG" > /tmp/train.yaml
python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from parallel_folds import prepare_cache; print('prepared', prepare_cache('/tmp/train.yaml', [], 14))"
MAXMIN=$(python3 -c "print(($LIMIT_S - 40 - ($(date +%s) - $T0)) / 60)")
echo "setup $(( $(date +%s) - T0 )) s; training for at most $MAXMIN min"
python3 -m cardioseg.cli.main train -c /tmp/train.yaml --no-progress --set output_dir=/tmp/run \
    --set train.num_workers="$WORKERS" --set train.max_minutes="$MAXMIN" ${EXTRA:-} 2>&1 | tee "$OUT/train.log"
cd /tmp/run && cp config.yaml metrics.csv summary.json "$OUT/"
[ -f final.pt ] && cp final.pt "$OUT/"
# exit status 1 when the schedule did not finish: then last.pt goes back too, to resume
if ! python3 -c "import json, sys, yaml
done, planned = json.load(open('summary.json'))['epochs_done'], yaml.safe_load(open('config.yaml'))['train']['epochs']
print('epochs done', done, 'of', planned); sys.exit(done < planned)"; then
    split -b 15M last.pt "$OUT/last.pt.part-"
fi
ls -la "$OUT"
echo "total: $(( $(date +%s) - T0 )) s"
