#!/usr/bin/env bash
# The balanced prior on a lent GPU in one call (benchmarks/balanced_prior.py's steps 1 and 2), packed for the way back.
# Run from the repo root on the device machine, with the wheels the image lacks in .whl/ (diffusers, kornia,
# kornia_rs, importlib_metadata, fastcore; see the device tool's README) and $OUT set. Budgets: TRAIN_S of training, then new
# attack cases started for ATTACK_S; each phase is capped so that the call ends inside its lease.
set -u; export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
TRAIN_S=${TRAIN_S:-200}; ATTACK_S=${ATTACK_S:-180}; JOBS=${JOBS:-8}; DEVICE=${DEVICE:-cuda}; PY=${PY:-python3}
WORKERS=${WORKERS:-12}; BATCH=${BATCH:-128}; WARMUP=${WARMUP:-40}
[ -n "${SKIP_PIP:-}" ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee $OUT/device.txt
$PY -c "import torch, diffusers, diffula.pipeline; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'diffusers', diffusers.__version__)" 2>&1 | tee -a $OUT/device.txt
t0=$(date +%s)
timeout $((TRAIN_S + 90)) $PY benchmarks/balanced_prior.py train --out out/prior_balanced --device $DEVICE \
    --budget-s $TRAIN_S --workers $WORKERS --batch-size $BATCH --warmup $WARMUP 2>&1 | grep -v "^step " | tee $OUT/train.log
echo "train phase: $(( $(date +%s) - t0 )) s" | tee -a $OUT/train.log
tar cf $OUT/prior_balanced.tar out/prior_balanced
t1=$(date +%s)
timeout $((ATTACK_S + 60)) $PY benchmarks/balanced_prior.py attacks --prior out/prior_balanced --runs out/balanced/runs \
    --device $DEVICE --jobs $JOBS --deadline-s $ATTACK_S 2>&1 | tee $OUT/attacks.log
echo "attack phase: $(( $(date +%s) - t1 )) s" | tee -a $OUT/attacks.log
pkill -f balanced_prior.py; pkill -f multiprocessing.spawn; sleep 1
find out/balanced/runs -name metrics.json | wc -l | tee -a $OUT/attacks.log
tar czf - --exclude='*.png' out/balanced/runs | split -b 15000000 - $OUT/runs.tgz.
ls -la $OUT
