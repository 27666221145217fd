#!/bin/sh
# Installs everything tainerd and its tests need on a fresh Debian 12 machine (as root):
# Debian packages, Deno from the npm package `deno`, the code generators, and containerd's and
# containerd/cgroups' protos (the references the wire-compatibility test checks against).
set -eu
cd "$(dirname "$0")/.."

DENO_VERSION=2.9.6
export DEBIAN_FRONTEND=noninteractive

if [ "$(id -u)" != 0 ]; then
  echo "setup.sh: run as root (it installs packages)" >&2
  exit 1
fi

# Node.js and npm come with the machine image (Debian's own npm conflicts with it).
if ! command -v npm >/dev/null; then
  echo "setup.sh: npm is missing; install Node.js 20+ first" >&2
  exit 1
fi

apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  ca-certificates curl git tar gzip zstd attr libarchive-tools \
  runc containerd docker-registry skopeo umoci busybox-static \
  containernetworking-plugins iptables iproute2 socat hyperfine nghttp2-client tmux apache2-utils openssl util-linux \
  systemd >/dev/null

if ! command -v deno >/dev/null || [ "$(deno --version | head -1 | cut -d' ' -f2)" != "$DENO_VERSION" ]; then
  npm install -g --no-audit --no-fund "deno@$DENO_VERSION" >/dev/null
fi

# The system containerd is only wanted for its ctr client (and side-by-side benchmarks, which
# start their own private instance): keep the packaged service from holding runc state.
systemctl disable --now containerd >/dev/null 2>&1 || true

npm ci --no-audit --no-fund --prefix tools >/dev/null
deno install >/dev/null

REF=${CONTAINERD_API_REF_DIR:-/var/cache/tainerd/containerd-ref}
if [ ! -d "$REF/usr/share/gocode/src/github.com/containerd/containerd/api" ]; then
  mkdir -p "$REF"
  tmp=$(mktemp -d); chmod 755 "$tmp"
  (cd "$tmp" && apt-get download -qq golang-github-containerd-containerd-dev)
  dpkg -x "$tmp"/golang-github-containerd-containerd-dev_*.deb "$REF"
  rm -rf "$tmp"
fi
# containerd/cgroups' protos: the reference for the task metrics (io.containerd.cgroups.v1/v2).
CGREF=${CGROUPS_API_REF_DIR:-/var/cache/tainerd/cgroups-ref}
if [ ! -f "$CGREF/usr/share/gocode/src/github.com/containerd/cgroups/stats/v1/metrics.proto" ]; then
  mkdir -p "$CGREF"
  tmp=$(mktemp -d); chmod 755 "$tmp"
  (cd "$tmp" && apt-get download -qq golang-github-containerd-cgroups-dev)
  dpkg -x "$tmp"/golang-github-containerd-cgroups-dev_*.deb "$CGREF"
  rm -rf "$tmp"
fi
# crictl (the CRI plugin's independent client in the tests), built from the Go module proxy;
# the same download leaves cri-api's api.proto in the module cache, the CRI wire reference.
CRI_TOOLS_VERSION=v1.37.0
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
# (go install leaves the version unset: a stamp file records which one was built.)
STAMP=/var/cache/tainerd/crictl.version
if [ ! -x /usr/local/bin/crictl ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$CRI_TOOLS_VERSION" ]; then
  if [ -x "$GO" ]; then
    GOBIN=/usr/local/bin "$GO" install "sigs.k8s.io/cri-tools/cmd/crictl@$CRI_TOOLS_VERSION"
    mkdir -p /var/cache/tainerd && echo "$CRI_TOOLS_VERSION" >"$STAMP"
  else
    echo "setup.sh: no Go toolchain: crictl not built, the CRI tests will be skipped" >&2
  fi
fi
# critest (cri-tools' CRI validation suite, run by `deno task critest`): a Go test binary, so
# `go install` refuses it; `go test -c` builds it from a throwaway module requiring cri-tools.
CRITEST_STAMP=/var/cache/tainerd/critest.version
if [ ! -x /usr/local/bin/critest ] || [ "$(cat "$CRITEST_STAMP" 2>/dev/null)" != "$CRI_TOOLS_VERSION" ]; then
  if [ -x "$GO" ]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && printf 'module critestbuild\n\ngo 1.24\n' >go.mod &&
      "$GO" get -t "sigs.k8s.io/cri-tools/cmd/critest@$CRI_TOOLS_VERSION" >/dev/null 2>&1 &&
      "$GO" test -c -o /usr/local/bin/critest sigs.k8s.io/cri-tools/cmd/critest)
    rm -rf "$tmp"
    mkdir -p /var/cache/tainerd && echo "$CRI_TOOLS_VERSION" >"$CRITEST_STAMP"
  else
    echo "setup.sh: no Go toolchain: critest not built, the critest smoke test will be skipped" >&2
  fi
fi
if [ -x "$GO" ]; then
  (cd /tmp && "$GO" mod download "k8s.io/cri-api@v0.37.0" >/dev/null 2>&1) || true
fi

echo "setup done: deno $(deno --version | head -1 | cut -d' ' -f2), runc $(runc --version | head -1 | cut -d' ' -f3), ctr $(ctr --version | cut -d' ' -f3)"
