#!/bin/bash
cd /work/wt-prompt-vicreg
export PYTHONPATH=/work/wt-prompt-vicreg OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MMEDGE_DATA_DIR=/work/shared-data
U=/work/shared-runs/av-digits/unimodal
for a in 1 10 50; do
  /usr/bin/time -f "wall %e s" nice -n 10 /work/main/.venv/bin/python -m train run --method prompt-vicreg --dataset av-digits --seed 0 \
    --set alpha=$a --unimodal-dir $U --runs-dir /work/wt-prompt-vicreg/runs --out runs/av-digits/pv-alpha$a-seed0 > logs/alpha$a.log 2>&1
done
