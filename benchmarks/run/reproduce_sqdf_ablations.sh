#!/usr/bin/env bash
# SQDF's ablations as reward-KL frontiers: each variant changes one setting of SQDF and sweeps the frontier's
# beta grid (0.01, 0.1, 1, 10) on the frontier's tasks, seeds and settings (budget 1000, seeds 0-4, 10 DDIM
# steps, 20 updates/round, 30 proxy epochs, 128 eval draws; benchmarks/run/reproduce_frontier.sh). The full
# method is not re-run: its runs are the committed frontier's (results/frontier_runs.csv). Variants, each
# against the default (gamma 0.9, consistency-model soft-Q, replay buffer with reward+gamma PER, PER factor
# r - min r):
#   gamma=1 (no discount), q_estimator=tweedie (no consistency model), buffer=none (fresh rollouts only),
#   per_priority=clamp (PER factor max(r, 0) on standardised rewards).
# Runs go to OUT/<variant>/sqdf__beta=<value>/ (resumable); then
#   results/sqdf_ablations_runs.csv   one row per run (the frontier's SQDF and pretrained runs, and the variants,
#                                     named "sqdf <variant>"), the committed source of the tables below;
#   results/sqdf_ablations.csv        one row per grid point (mean and 95 % t-interval over seeds);
#   results/sqdf_ablations_leaderboard.{csv,md}  score at matched KL and the area under each frontier;
#   results/sqdf_ablations/frontier_<task>.png   the frontiers.
# Paired verdicts (SQDF against each variant): python -m benchmarks.report.frontier_readme
# results/sqdf_ablations_runs.csv --run-verdicts sqdf --frontier auf --summary
#
#   bash benchmarks/run/reproduce_sqdf_ablations.sh [OUT=results/run_records/sqdf_ablations_b1000] [WORKERS=2]
set -euo pipefail
OUT=${1:-results/run_records/sqdf_ablations_b1000}
WORKERS=${2:-2}
source "$(dirname "${BASH_SOURCE[0]}")/_args.sh"
check_out_workers "$OUT" "$WORKERS"
shift $(( $# > 2 ? 2 : $# ))
TASKS=ackley-manifold,levy-manifold,rastrigin-manifold,levy
VARIANTS=(gamma=1 q_estimator=tweedie buffer=none per_priority=clamp)
for variant in "${VARIANTS[@]}"; do
    python -m benchmarks.run.frontier --tasks "$TASKS" --methods sqdf --budget 1000 --seeds 0-4 \
        --out "$OUT/$variant" --workers "$WORKERS" --threads 1 --resume --no-progress \
        --set run.n_eval=128 --set num_steps=10 --set updates_per_round=20 --set proxy_epochs=30 --set "$variant" \
        --csv /dev/null --plots '' --leaderboard '' "$@"
done
case " $* " in *" --dry-run "*) exit 0;; esac
python -m benchmarks.run.ablations --out "$OUT" --reference results/frontier_runs.csv --method sqdf \
    --runs-csv results/sqdf_ablations_runs.csv
python -m benchmarks.run.frontier --from-runs results/sqdf_ablations_runs.csv --csv results/sqdf_ablations.csv \
    --plots results/sqdf_ablations --leaderboard results/sqdf_ablations_leaderboard.csv \
    --md results/sqdf_ablations_leaderboard.md
