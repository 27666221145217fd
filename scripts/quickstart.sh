#!/bin/sh
# The main job, end to end on a fresh Debian 12 machine as root: set up, start the daemon,
# build a busybox image offline, import it, and run a container from it — with tainerd's
# own CLI and with the real ctr.
set -eu
cd "$(dirname "$0")/.."
./scripts/setup.sh

SOCK=${TAINERD_ADDRESS:-/run/tainerd/tainerd.sock}
LOG=/var/log/tainerd-quickstart.log
IMAGE=docker.io/tainerd/busybox:latest
tainerd() { deno run -A main.ts -a "$SOCK" "$@"; }

if ! ctr -a "$SOCK" version >/dev/null 2>&1; then
  echo "starting tainerd (log: $LOG)"
  nohup deno run -A main.ts daemon --address "$SOCK" >"$LOG" 2>&1 &
  i=0
  until ctr -a "$SOCK" version >/dev/null 2>&1; do
    i=$((i + 1))
    if [ $i -gt 150 ]; then
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
deno run -A scripts/busybox_image.ts /tmp/tainerd-busybox.tar "$IMAGE"
tainerd images import /tmp/tainerd-busybox.tar
tainerd images ls
tainerd run --rm "$IMAGE" quickstart echo "hello from a tainerd container"
ctr -a "$SOCK" run --rm "$IMAGE" quickstart-ctr sh -c 'echo "hello from ctr, pid $$ in its own namespace"'
