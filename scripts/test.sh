#!/bin/sh
# Runs every test (unit tests beside the code, end-to-end tests in tests/) and ends with
# one line: "N passed, N failed".
set -u
cd "$(dirname "$0")/.."
export CONTAINERD_API_REF="${CONTAINERD_API_REF:-/var/cache/tainerd/containerd-ref/usr/share/gocode/src/github.com/containerd/containerd}"
log=$(mktemp)
rcfile=$(mktemp)
{ deno test -A --parallel "$@" 2>&1; echo $? >"$rcfile"; } | tee "$log"
status=$(cat "$rcfile")
rm -f "$rcfile"
# deno's own summary line: "ok | 12 passed (3 steps) | 0 failed | 1 ignored (…)".
summary=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E '^(ok|FAILED) \| ' | tail -1)
passed=$(echo "$summary" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+' || echo 0)
failed=$(echo "$summary" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+' || echo 0)
rm -f "$log"
if [ -z "$summary" ]; then
  echo "0 passed, 1 failed"
  exit 1
fi
echo "${passed:-0} passed, ${failed:-0} failed"
[ "${failed:-0}" = 0 ] && [ "$status" = 0 ]
