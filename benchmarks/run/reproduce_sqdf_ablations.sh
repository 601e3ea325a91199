#!/usr/bin/env bash
# SQDF's ablations under the current defaults (issue 12 item 2), at one point of the common KL scale
# (beta = 0.1: the middle of SQDF's frontier on the vector tier) with the frontier's settings (budget 1000,
# seeds 0-2, 10 DDIM steps, 20 updates/round, 30 proxy epochs, 128 eval draws) on the frontier's tasks.
# Each variant changes one setting from the default (gamma 0.9, consistency model, replay buffer with
# reward+gamma_PER, per_priority=shift_min):
#   gamma=1 (no discount), q_estimator=tweedie (no CM), buffer=none (no buffer), per_priority=clamp (the
#   previous PER rule, max(r, 0) on standardised rewards).
# Runs go to OUT/sqdf__<key>=<value>/ (the default point: OUT/sqdf__beta=0.1/) and the summary (mean and
# 95% CI over seeds per variant) to results/sqdf_ablations.csv. Resumable.
#
#   bash benchmarks/run/reproduce_sqdf_ablations.sh [OUT=runs/ablations] [WORKERS=2]
set -euo pipefail
OUT=${1:-runs/ablations}
WORKERS=${2:-2}
TASKS=ackley-manifold,levy-manifold,rastrigin-manifold,levy
COMMON=(--tasks "$TASKS" --methods sqdf --budget 1000 --seeds 0-2 --out "$OUT" --workers "$WORKERS" --threads 1
        --resume --no-progress --set run.n_eval=128 --set num_steps=10 --set updates_per_round=20
        --set proxy_epochs=30 --csv /dev/null --plots "$OUT/_plots" --leaderboard /dev/null)
python -m benchmarks.run.frontier "${COMMON[@]}" --grid sqdf=0.1
for variant in gamma=1 q_estimator=tweedie buffer=none per_priority=clamp; do
    python -m benchmarks.run.frontier "${COMMON[@]}" --set beta=0.1 --knob "sqdf=${variant%%=*}" --grid "sqdf=${variant#*=}"
done
python -m benchmarks.run.frontier --report-only --out "$OUT" --csv results/sqdf_ablations.csv --plots "$OUT/_plots" \
    --leaderboard /dev/null
