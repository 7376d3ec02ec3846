#!/bin/bash
cd /work/wt-prompt-vicreg
export PYTHONPATH=/work/wt-prompt-vicreg OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MMEDGE_DATA_DIR=/work/shared-data
U=/work/shared-runs/av-digits/unimodal
for s in 1 2; do
  /usr/bin/time -f "wall %e s" nice -n 10 /work/main/.venv/bin/python -m train run --method prompt-vicreg --dataset av-digits --seed $s \
    --unimodal-dir $U --runs-dir /work/wt-prompt-vicreg/runs --out runs/av-digits/pv-alpha50-seed$s > logs/seed$s.log 2>&1
done
/usr/bin/time -f "wall %e s" nice -n 10 /work/main/.venv/bin/python -m train eval --method prompt-vicreg --dataset av-digits --protocol lee \
   --run runs/av-digits/pv-alpha50-seed0 --runs-dir /work/wt-prompt-vicreg/runs --unimodal-dir $U --out runs/av-digits/pv-lee > logs/lee.log 2>&1
