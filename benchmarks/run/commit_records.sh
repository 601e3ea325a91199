#!/usr/bin/env bash
# Commit the records of every finished run under a sweep's output folder, so a re-make spread over sessions
# keeps what it has done (the sweep is resumable from these files: a run folder with final.json is finished).
# Only the record files are committed (and the frontier sweep's merged grid plan, _frontier.json): config.json, rounds.jsonl, final.json, and the seed-0 run's samples.png
# where the run wrote one (the image tier's sample grid: the frontier's sample figure shows the lowest seed's);
# checkpoints, designs and query logs stay local (results/run_records/.gitignore).
#
#   bash benchmarks/run/commit_records.sh OUT "message prefix" [EVERY_S]
#
# With EVERY_S it repeats every EVERY_S seconds until killed; a commit touches only the record paths, so
# other staged or unstaged work is left alone.
set -euo pipefail
OUT=${1:?usage: commit_records.sh OUT MESSAGE [EVERY_S]}
MSG=${2:?usage: commit_records.sh OUT MESSAGE [EVERY_S]}
EVERY=${3:-}
once() {
    local paths=() f d n=0
    while IFS= read -r f; do
        n=$((n + 1))
        d=$(dirname "$f")
        for name in config.json rounds.jsonl final.json; do
            [ -f "$d/$name" ] && paths+=("$d/$name")
        done
        [[ "$d" == *__s0 && -f "$d/samples.png" ]] && ! git check-ignore -q "$d/samples.png" && paths+=("$d/samples.png")
    done < <(find "$OUT" -name final.json -type f | sort)
    [ -f "$OUT/_frontier.json" ] && paths+=("$OUT/_frontier.json")  # the sweep's merged grid plan
    [ ${#paths[@]} -gt 0 ] || return 0
    git add -- "${paths[@]}"
    if ! git diff --cached --quiet -- "${paths[@]}"; then
        git commit -q -m "$MSG: records of $n finished runs (resumable from $OUT)" -- "${paths[@]}"
        echo "$(date -u +%H:%M:%S) committed, $n finished runs"
    fi
}
if [ -z "$EVERY" ]; then once; exit; fi
while true; do once || echo "commit failed (will retry)" >&2; sleep "$EVERY"; done
