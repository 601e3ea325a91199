#!/usr/bin/env bash
# Re-create the committed leaderboard (results/leaderboard.{csv,md}, results/aggregate.csv) and plots
# (results/*.png) from scratch: every method x {ackley, levy, rastrigin-manifold} (budget 2000) and
# {aesthetic} (budget 1000) x 5 seeds. Resumable: re-running skips finished runs and continues
# interrupted ones. About 1.5 h for the synthetic tier and 3 h for the image tier on 2 CPU cores.
#
#   bash benchmarks/run/reproduce_leaderboard.sh [OUT=results/run_records/leaderboard] [WORKERS=2] [PART=all|synthetic|image]
#
# OUT defaults to the committed run records: a run with final.json there is finished and skipped, so a re-make
# spread over sessions commits its records as runs finish (benchmarks/run/commit_records.sh OUT MESSAGE 600)
# and every committed row is rebuilt from them: results/leaderboard_runs.csv holds one row per run.
#
# PART=synthetic or image re-makes one tier only: its runs, its rows of the committed tables
# (`benchmarks.report.leaderboard --update` keeps the other tier's rows as they are; each row's git_commits says
# which code made it) and its budget's figures (*_b2000.png or *_b1000.png, samples_aesthetic.png).
set -euo pipefail
USAGE="usage: bash benchmarks/run/reproduce_leaderboard.sh [OUT] [WORKERS] [all|synthetic|image] (no options)"
[ $# -le 3 ] || { echo "error: at most 3 arguments, got $#; $USAGE" >&2; exit 2; }
for a in "$@"; do
    # an option (e.g. --dry-run) would otherwise be taken for OUT and start the sweep
    [[ "$a" != -* ]] || { echo "error: this script takes no options, got '$a'; $USAGE" >&2; exit 2; }
done
OUT=${1:-results/run_records/leaderboard}
WORKERS=${2:-2}
PART=${3:-all}
case "$PART" in all|synthetic|image) ;; *) echo "error: PART must be all, synthetic or image, got '$PART'" >&2; exit 2;; esac
source "$(dirname "${BASH_SOURCE[0]}")/_args.sh"
check_out_workers "$OUT" "$WORKERS"  # the same WORKERS check as the frontier scripts (options are refused above)
SYNTH=ackley,levy,rastrigin-manifold
TUNED=ddpo,ddpo-sf,seiko,alignprop,draft,draft-k,draft-1,draft-lv,adjoint-matching
COMMON=(--seeds 0-4 --out "$OUT" --workers "$WORKERS" --threads 1 --resume --set run.n_eval=128)

if [ "$PART" != image ]; then
    # synthetic tier: 50 DDIM steps (task default); fine-tuning methods 20 updates/round, 30 proxy epochs
    python -m benchmarks.run.sweep --tasks "$SYNTH" --methods pretrained --budget 2000 "${COMMON[@]}"
    python -m benchmarks.run.sweep --tasks "$SYNTH" --methods sqdf --budget 2000 "${COMMON[@]}" \
        --set updates_per_round=20 --set proxy_epochs=30 --set fill_every=4
    python -m benchmarks.run.sweep --tasks "$SYNTH" --methods "$TUNED" --budget 2000 "${COMMON[@]}" \
        --set updates_per_round=20 --set proxy_epochs=30
fi
if [ "$PART" != synthetic ]; then
    # image tier (embedded 16x16 UNet, 20 DDIM steps): 10 updates/round, 30 proxy epochs
    python -m benchmarks.run.sweep --tasks aesthetic --methods pretrained --budget 1000 "${COMMON[@]}"
    python -m benchmarks.run.sweep --tasks aesthetic --methods "sqdf,$TUNED" --budget 1000 "${COMMON[@]}" \
        --set updates_per_round=10 --set proxy_epochs=30
fi

UPDATE=()
PLOT=()
if [ "$PART" != all ]; then UPDATE=(--update); PLOT=(--budget-suffix); fi
SETTINGS="Settings, identical for every method within a task (nothing tuned per method or task): synthetic tasks \
(ackley, levy, rastrigin-manifold) at budget 2000 (4 rounds of 133/266/533/1068 queries), the task's 50 DDIM steps \
(eta 1), 128 eval samples; fine-tuning methods updates_per_round=20, proxy_epochs=30 (CPU scaling of the official \
40 / 300), SQDF also fill_every=4. Image task aesthetic (embedded 16x16 UNet, 20 DDIM steps) at budget 1000 \
(66/133/266/535), 128 eval samples, updates_per_round=10, proxy_epochs=30."
HOW="Re-create: \`bash benchmarks/run/reproduce_leaderboard.sh [OUT] [WORKERS] [all|synthetic|image]\` (resumable); \
one tier re-made with synthetic or image keeps the other tier's rows as they were: each row's git_commits \
column says which code made it."
python -m benchmarks.report.leaderboard "$OUT" --min-seeds 5 --out results/leaderboard.csv \
    --md results/leaderboard.md --aggregate results/aggregate.csv "${UPDATE[@]}" --note "$SETTINGS" --note "$HOW"
python -m benchmarks.report.plot "$OUT" --min-seeds 5 --out results/ "${PLOT[@]}"
python -m benchmarks.report.run_records --runs "$OUT" --csv results/leaderboard_runs.csv
