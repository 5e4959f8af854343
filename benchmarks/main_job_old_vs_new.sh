#!/bin/bash
# The README LLM4DSR demonstration's (the main job until issue 17) LLM4DSR stage, code before issue 16 vs now, back to back (issue 16's ">= 2x" row of
# results/llm_stages.md). Needs a worktree of the old commit:  git worktree add /tmp/old16 6ed29d7
# Usage: bash benchmarks/main_job_old_vs_new.sh [/tmp/old16]   (then read denoise seconds from the JSONs)
OLD=${1:-/tmp/old16}
NEW=$(cd "$(dirname "$0")/.." && pwd)
ARGS="--model SASRec --dataset amazon-beauty --denoiser None,LLM4DSR --sample_users=200 --noise_ratio=0.1 --MAX_ITEM_LIST_LENGTH=10 --epochs=5 --finetune_samples=48 --finetune_epochs=1 --llm_title_max_tokens=10"
for which in new old; do
  dir=$NEW; [ $which = old ] && dir=$OLD
  rm -rf /tmp/mj16-$which
  cd "$dir" && echo "$which $(git rev-parse --short HEAD) start $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  t=$(date +%s.%N)
  OMP_NUM_THREADS=2 PYTHONPATH=$dir python run_recbole_denoise.py $ARGS --derived_data_path=/tmp/mj16-$which \
      --result_file=/tmp/mj16-$which.json > /tmp/mj16-$which.log 2>&1
  echo "$which rc $? wall $(echo "$(date +%s.%N) - $t" | bc) s end $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
  python -c "import json; r = json.load(open('/tmp/mj16-$which.LLM4DSR.json')); print('$which', 'denoise s', round(r['timings']['denoise'], 1), r['denoise'].get('suggestions'))"
done
