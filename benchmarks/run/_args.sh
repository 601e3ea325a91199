# Shared by the reproduce scripts: check their positional OUT and WORKERS before anything runs.
#   source "$(dirname "${BASH_SOURCE[0]}")/_args.sh"; check_out_workers "$OUT" "$WORKERS"
# An option given first (e.g. --dry-run) would otherwise become OUT and start the whole sweep.
check_out_workers() {
    local a
    for a in "$1" "$2"; do
        [[ "$a" != -* ]] || { echo "error: OUT and WORKERS come before any option, got '$a' in their place; usage: bash $0 [OUT] [WORKERS] [options ...]" >&2; exit 2; }
    done
    [[ "$2" =~ ^[1-9][0-9]*$ ]] || { echo "error: WORKERS must be a positive integer, got '$2'" >&2; exit 2; }
}
