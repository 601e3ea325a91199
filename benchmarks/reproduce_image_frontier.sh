#!/usr/bin/env bash
# Moved to benchmarks/run/reproduce_image_frontier.sh (the same arguments); this path still runs it.
exec bash "$(dirname "$0")/run/reproduce_image_frontier.sh" "$@"
