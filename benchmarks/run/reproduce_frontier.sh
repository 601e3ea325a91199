#!/usr/bin/env bash
# Re-create the committed reward–KL frontier (results/frontier.csv, results/frontier_<task>.png,
# results/frontier_leaderboard.{csv,md}, and one row per run in results/frontier_runs.csv): every method on
# ackley-manifold, levy-manifold, rastrigin-manifold and levy, budget 1000, seeds 0-4, each method over its
# knob grid (the rule in benchmarks/run/frontier.py: beta = 0.01, 0.1, 1, 10 for the KL-regularised methods and
# fk-steering; a knob the agent class declares in its `frontier_knob` attribute -- raft's keep_fraction
# 0.03, 0.1, 0.25, 0.5, diffusion-nft's nft_beta 0.1, 1, 10, 100 and rlcm's updates_per_round 2, 5, 10, 20
# (rlcm has no regulariser: its number of PPO updates per round sets its trade-off); lr = default x 0.01, 0.1, 1, 10 for the
# other methods without a KL term; candidate counts 2, 4, 16, 64 for best-of-n and svdd; pretrained, random,
# turbo and qlognei as one point each). Resumable: re-running skips finished runs and continues interrupted
# ones. The tables and plots rebuild from the runs CSV alone:
#   python -m benchmarks.run.frontier --from-runs results/frontier_runs.csv --csv results/frontier.csv \
#       --plots results/ --leaderboard results/frontier_leaderboard.csv --md results/frontier_leaderboard.md
#
#   bash benchmarks/run/reproduce_frontier.sh [OUT=results/run_records/frontier_b1000] [WORKERS=2]
#
# The default OUT is the committed run records' folder: finished runs are skipped, so the script then
# rebuilds the tables from them and runs only what is missing (commit what it adds with
# benchmarks/run/commit_records.sh). Give another OUT to re-run everything.
#
# Extra arguments after the first two go to the sweep (e.g. --dry-run to list the runs and check every
# setting without running anything).
set -euo pipefail
OUT=${1:-results/run_records/frontier_b1000}
WORKERS=${2:-2}
source "$(dirname "${BASH_SOURCE[0]}")/_args.sh"
check_out_workers "$OUT" "$WORKERS"
shift $(( $# > 2 ? 2 : $# ))
TASKS=ackley-manifold,levy-manifold,rastrigin-manifold,levy
TRAINED=(sqdf seiko adjoint-matching alignprop draft draft-k draft-1 draft-lv ddpo ddpo-sf raft diffusion-nft find d3po rlcm)
PEERS=(best-of-n svdd fk-steering dts dts-star)  # inference-time: refit the same proxy, train nothing
PRIOR_FREE=(random turbo qlognei)  # ignore the diffusion prior: no path KL, one point each
METHODS=pretrained,$(IFS=,; echo "${TRAINED[*]}"),$(IFS=,; echo "${PEERS[*]}"),$(IFS=,; echo "${PRIOR_FREE[*]}")

# Common settings: 128 eval draws for every method and 10 DDIM steps for every diffusion method (pretrained
# included; the prior-free ones have no num_steps, so it goes through --set-for); the
# fine-tuning methods also get 20 updates per round and 30 proxy epochs (pretrained trains nothing and
# has neither key, so these go through --set-for).
PER_METHOD=()
for m in "${TRAINED[@]}"; do
    PER_METHOD+=(--set-for "$m" proxy_epochs=30)
    # rlcm sweeps its number of updates (its frontier knob: 2, 5, 10, 20 per round)
    [ "$m" = rlcm ] || PER_METHOD+=(--set-for "$m" updates_per_round=20)
done
for m in "${PEERS[@]}"; do
    PER_METHOD+=(--set-for "$m" proxy_epochs=30)
done
for m in pretrained "${TRAINED[@]}" "${PEERS[@]}"; do
    PER_METHOD+=(--set-for "$m" num_steps=10)
done
# qLogNEI's acquisition budget (compute, not tuning): with BoTorch's tutorial settings (8-point chunks, 10
# restarts, 512 raw samples, 200 L-BFGS iterations, 256 MC samples) one run of 1000 queries takes over an
# hour on one core (the 535-point last round alone > 10 min at 400 observations); these settings take
# about 3 min for that round.
PER_METHOD+=(--set-for qlognei q_chunk=32 --set-for qlognei num_restarts=4 --set-for qlognei raw_samples=256
             --set-for qlognei maxiter=50 --set-for qlognei mc_samples=128)

python -m benchmarks.run.frontier --tasks "$TASKS" --methods "$METHODS" --budget 1000 --seeds 0-4 \
    --out "$OUT" --workers "$WORKERS" --threads 1 --resume --no-progress \
    --set run.n_eval=128 "${PER_METHOD[@]}" \
    --csv results/frontier.csv --plots results/ --leaderboard results/frontier_leaderboard.csv \
    --md results/frontier_leaderboard.md --runs-csv results/frontier_runs.csv "$@"
