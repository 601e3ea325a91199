#!/usr/bin/env bash
# Re-create the committed leaderboard (results/leaderboard.{csv,md}, results/aggregate.csv) and plots
# (results/*.png) from scratch: every method x {ackley, levy, rastrigin-manifold} (budget 2000) and
# {aesthetic} (budget 1000) x 5 seeds. Resumable: re-running skips finished runs and continues
# interrupted ones. About 2 h on 2 CPU cores (see README "Leaderboard").
#
#   bash benchmarks/reproduce_leaderboard.sh [OUT=runs/sweep] [WORKERS=2]
set -euo pipefail
OUT=${1:-runs/sweep}
WORKERS=${2:-2}
SYNTH=ackley,levy,rastrigin-manifold
TUNED=ddpo,ddpo-sf,seiko,alignprop,draft,draft-k,draft-1,draft-lv,adjoint-matching
COMMON=(--seeds 0-4 --out "$OUT" --workers "$WORKERS" --threads 1 --resume --set run.n_eval=128)

# synthetic tier: 50 DDIM steps (task default); fine-tuning methods 20 updates/round, 30 proxy epochs
python -m benchmarks.sweep --tasks "$SYNTH" --methods pretrained --budget 2000 "${COMMON[@]}"
python -m benchmarks.sweep --tasks "$SYNTH" --methods sqdf --budget 2000 "${COMMON[@]}" \
    --set updates_per_round=20 --set proxy_epochs=30 --set fill_every=4
python -m benchmarks.sweep --tasks "$SYNTH" --methods "$TUNED" --budget 2000 "${COMMON[@]}" \
    --set updates_per_round=20 --set proxy_epochs=30

# image tier (embedded 16x16 UNet, 20 DDIM steps): 10 updates/round, 30 proxy epochs
python -m benchmarks.sweep --tasks aesthetic --methods pretrained --budget 1000 "${COMMON[@]}"
python -m benchmarks.sweep --tasks aesthetic --methods "sqdf,$TUNED" --budget 1000 "${COMMON[@]}" \
    --set updates_per_round=10 --set proxy_epochs=30

python -m benchmarks.leaderboard "$OUT" --min-seeds 5 --out results/leaderboard.csv \
    --md results/leaderboard.md --aggregate results/aggregate.csv
python -m benchmarks.plot "$OUT" --min-seeds 5 --out results/
