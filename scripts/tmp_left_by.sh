#!/usr/bin/env bash
# What a command leaves in /tmp, measured exactly (RELIABILITY.md, class 8).
#
#   scripts/tmp_left_by.sh REPORT -- COMMAND [ARGS...]
#
# Runs COMMAND in a private mount namespace whose /tmp is a fresh, empty tmpfs, so
# nothing else on the machine can add to or take from it; when COMMAND exits, writes
# to REPORT its exit code, the bytes left in /tmp (`du -sb`; an empty tmpfs reports
# 40) and the largest entries. Needs root (or user namespaces) for `unshare -m`.
set -euo pipefail
report=$(realpath -m "$1")
shift
[[ "${1:-}" == "--" ]] && shift
exec unshare -m --propagation private bash -c '
report=$1; shift
mount -t tmpfs -o size=4g none /tmp || exit 99
"$@"; rc=$?
{ echo "rc $rc"; echo "bytes $(du -sb /tmp | cut -f1)"; du -sb /tmp/* /tmp/.[!.]* 2>/dev/null | sort -n | tail -40; } > "$report"
exit $rc' _ "$report" "$@"
