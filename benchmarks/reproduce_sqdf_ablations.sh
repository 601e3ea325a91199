#!/usr/bin/env bash
# Moved to benchmarks/run/reproduce_sqdf_ablations.sh (the same arguments); this path still runs it.
exec bash "$(dirname "$0")/run/reproduce_sqdf_ablations.sh" "$@"
