#!/usr/bin/env bash
# The image-tier reward–KL frontier (issue 12, item 6): every method that fine-tunes or steers the embedded
# 16x16 UNet on `aesthetic-manifold` (the oracle gives images that leave the natural-patch manifold the worst
# value a natural patch gets), budget 1000 in 4 rounds, seeds 0-4 (as the synthetic frontier), each method over the grid rule of
# benchmarks/run/frontier.py (beta = 0.01, 0.1, 1, 10 for the KL-regularised methods and fk-steering; the knob an
# agent class declares in `frontier_knob` -- raft's keep_fraction 0.03, 0.1, 0.25, 0.5, diffusion-nft's
# nft_beta 0.1, 1, 10, 100, rlcm's updates_per_round 2, 5, 10, 20; lr = default x 0.01, 0.1, 1, 10 for the other methods without a KL term) except
# the candidate counts of best-of-n and svdd, capped at 2, 4, 16 for both: 64 candidates per proposal would
# cost about an hour per run on one core (64 x 20 UNet steps per query); and DTS's and DTS*'s rollouts per design,
# set to 16 (their default 32 costs about 25 CPU-minutes per run here): one cap for the search peers, at most 16
# chains' worth of UNet calls per design (a DTS rollout from tree level k costs 20 - k calls). The BO peers ignore the image prior
# and are not run. Resumable: re-running skips finished runs and continues interrupted ones, so it can be
# spread over several sessions (about 32 worker-hours in all, 16 h on 2 cores; from 2 CPU-minutes per run for the
# pretrained model to 10 for Adjoint Matching and more for the search peers). One row per run
# goes to results/frontier_image_runs.csv, from which `python -m benchmarks.run.frontier --from-runs` rebuilds
# the tables and the frontier plot (the samples figure needs the run folders).
#
#   bash benchmarks/run/reproduce_image_frontier.sh [OUT=results/run_records/frontier_image_b1000] [WORKERS=2]
#
# ONLY=sqdf,adjoint-matching runs a subset of the methods (the same settings, so the same protocol id: the
# re-make is spread over sessions, the methods a verdict rests on first); SEEDS=0-2 a subset of the seeds.
#
# The default OUT is the committed run records' folder: finished runs are skipped, so the script then
# rebuilds the tables from them and runs only what is missing (commit what it adds with
# benchmarks/run/commit_records.sh). Give another OUT to re-run everything.
#
# Extra arguments after the first two go to the frontier tool (e.g. --dry-run to list and check every run).
# Settings common to every method (as the committed `aesthetic` leaderboard): 128 eval draws, the task's 20
# DDIM steps, and for the fine-tuners 10 updates per round and 30 proxy epochs; the peers refit the same
# proxy with 30 epochs.
set -euo pipefail
OUT=${1:-results/run_records/frontier_image_b1000}
WORKERS=${2:-2}
source "$(dirname "${BASH_SOURCE[0]}")/_args.sh"
check_out_workers "$OUT" "$WORKERS"
shift $(( $# > 2 ? 2 : $# ))
TRAINED=(sqdf seiko adjoint-matching alignprop draft draft-k draft-1 draft-lv ddpo ddpo-sf raft diffusion-nft find d3po rlcm)
PEERS=(best-of-n svdd fk-steering dts dts-star)
SEEDS=${SEEDS:-0-4}
# the arguments that ONLY= keeps (all of them without ONLY=), in their order
keep() { local m; for m in "$@"; do [[ -z "${ONLY:-}" || ",$ONLY," == *",$m,"* ]] && echo "$m"; done; return 0; }
mapfile -t TRAINED < <(keep "${TRAINED[@]}")
mapfile -t PEERS < <(keep "${PEERS[@]}")
mapfile -t ALL < <(keep pretrained "${TRAINED[@]}" "${PEERS[@]}")
[ ${#ALL[@]} -gt 0 ] || { echo "ONLY=$ONLY names no method of this script" >&2; exit 2; }
METHODS=$(IFS=,; echo "${ALL[*]}")
PER_METHOD=()
for m in "${TRAINED[@]}"; do
    PER_METHOD+=(--set-for "$m" proxy_epochs=30)
    # rlcm sweeps its number of updates per round (its frontier knob), so it does not get the common 10
    [ "$m" = rlcm ] || PER_METHOD+=(--set-for "$m" updates_per_round=10)
done
for m in "${PEERS[@]}"; do
    PER_METHOD+=(--set-for "$m" proxy_epochs=30)
done
for m in $(keep dts dts-star); do
    PER_METHOD+=(--set-for "$m" rollouts=16)  # the search peers' cap (see above)
done
GRIDS=()  # candidate counts capped for the image tier (see above)
for m in $(keep best-of-n svdd); do
    GRIDS+=(--grid "$m=2,4,16")
done

python -m benchmarks.run.frontier --tasks aesthetic-manifold --methods "$METHODS" --budget 1000 --seeds "$SEEDS" \
    --out "$OUT" --workers "$WORKERS" --threads 1 --resume --no-progress \
    --set run.n_eval=128 "${PER_METHOD[@]}" "${GRIDS[@]}" \
    --csv results/frontier_image.csv --plots results/ --leaderboard results/frontier_image_leaderboard.csv \
    --md results/frontier_image_leaderboard.md --runs-csv results/frontier_image_runs.csv "$@"
