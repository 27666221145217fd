#!/bin/sh
# The main job, end to end on a fresh Debian 12 machine as root: set up, start the daemon,
# and drive it with the real ctr and with tainerd's own CLI.
set -eu
cd "$(dirname "$0")/.."
./scripts/setup.sh

SOCK=${TAINERD_ADDRESS:-/run/tainerd/tainerd.sock}
LOG=/var/log/tainerd-quickstart.log
if ! ctr -a "$SOCK" version >/dev/null 2>&1; then
  echo "starting tainerd (log: $LOG)"
  nohup deno run -A main.ts daemon --address "$SOCK" >"$LOG" 2>&1 &
  i=0
  until ctr -a "$SOCK" version >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -gt 100 ]; then
      echo "tainerd did not come up:" >&2
      cat "$LOG" >&2
      exit 1
    fi
    sleep 0.2
  done
fi

set -x
ctr -a "$SOCK" version
ctr -a "$SOCK" plugins ls
deno run -A main.ts -a "$SOCK" namespaces create quickstart demo=yes
ctr -a "$SOCK" namespaces ls
deno run -A main.ts -a "$SOCK" namespaces rm quickstart
