#!/usr/bin/env bash
# One call on a CUDA machine (the project's `device` tool): the ACDC 5-fold CV of the shipped recipe
# at its full schedule (configs/acdc_cv_full.yaml), folds side by side, plus the GPU inference check.
# Carried: .gpu/site.zip (monai, nibabel and pydicom, which that machine lacks, tests removed) and
# .gpu/acdc (python benchmarks/device/acdc_pack.py pack ../shared/data/acdc .gpu/acdc).
# Results come back in $OUT: gpu_inference.md, parallel_folds.log, foldK.tgz (config, metrics,
# summary, best.pt, log). LIMIT_S: seconds the whole script may take (the call's timeout less a margin).
set -u
T0=$(date +%s)
LIMIT_S=${LIMIT_S:-560}
FOLDS=${FOLDS:-0,1,2,3,4}
python3 -m zipfile -e .gpu/site.zip /tmp/site
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
nproc
python3 benchmarks/device/acdc_pack.py unpack .gpu/acdc /tmp/data/acdc
sed -e 's#../shared/data/acdc#/tmp/data/acdc#' -e 's#cache_dir: cache#cache_dir: /tmp/cache#' \
    configs/acdc_cv_full.yaml > /tmp/cv.yaml
timeout 100 python3 benchmarks/device/gpu_inference_check.py --data /tmp/data/acdc \
    -o "$OUT/gpu_inference.md" ${INFER_ARGS:-}
echo "setup and inference check: $(( $(date +%s) - T0 )) s"
BUDGET=$(python3 -c "print(($LIMIT_S - 25 - ($(date +%s) - $T0)) / 60)")
python3 benchmarks/parallel_folds.py -c /tmp/cv.yaml --runs /tmp/runs --folds "$FOLDS" \
    --set train.num_workers=${WORKERS:-2} --set train.num_threads=1 ${EXTRA:-} \
    --budget-minutes "$BUDGET" --probe-seconds ${PROBE_S:-60} 2>&1 | tee "$OUT/parallel_folds.log"
for f in ${FOLDS//,/ }; do
    d=/tmp/runs/fold$f
    tar -C /tmp/runs -czf "$OUT/fold$f.tgz" $(cd /tmp/runs && ls -d fold$f/{config.yaml,metrics.csv,summary.json,best.pt,final.pt,train.log} 2>/dev/null)
    tail -2 $d/train.log
done
echo "total: $(( $(date +%s) - T0 )) s"
