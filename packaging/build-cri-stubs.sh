#!/usr/bin/env bash
# Generate a Python client for the Kubernetes CRI (runtime.v1) into .cache/cri/
# (or $YOGURT_CRI_DIR): api_pb2.py and api_pb2_grpc.py, for the containerd test
# (tests/kernel/cri.py). Debian 12 ships no crictl; a gRPC client made from
# the CRI's own api.proto is all the test needs. The proto comes from Debian
# trixie's golang-github-kubernetes-cri-api-dev (bookworm has no such package;
# runtime.v1 is stable, so a newer proto serves containerd 1.6 fine), fetched
# through a private apt config; its gogoproto import and options (for Go code
# generation only) are stripped, and grpcio-tools from the project venv
# compiles it.
# Idempotent: existing stubs made by the venv's grpcio-tools are reused without
# touching apt or the network; a changed grpcio-tools regenerates them from the
# kept proto, offline.
# Prints the output dir on stdout; progress goes to stderr.
#
# Env: YOGURT_CRI_DIR     output and cache dir (default <repo>/.cache/cri)
#      YOGURT_CRI_PYTHON  python with grpcio-tools (default <repo>/.venv/bin/python)
#      YOGURT_CRI_SUITE   Debian suite to take the proto from (default trixie)
#      YOGURT_CRI_DEB     a local golang-github-kubernetes-cri-api-dev .deb (skips apt)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
DIR=${YOGURT_CRI_DIR:-$REPO/.cache/cri}
PY=${YOGURT_CRI_PYTHON:-$REPO/.venv/bin/python}
SUITE=${YOGURT_CRI_SUITE:-trixie}
PKG=golang-github-kubernetes-cri-api-dev
PROTO_IN_DEB=./usr/share/gocode/src/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto
log() { echo "build-cri-stubs: $*" >&2; }

tools=$("$PY" -c 'from importlib.metadata import version; print(version("grpcio-tools"))' 2>/dev/null) || {
    log "no grpcio-tools in $PY: install the project's dev extra (make venv)"
    exit 1
}
stamp="grpcio-tools $tools"
if [ -f "$DIR/api_pb2.py" ] && [ -f "$DIR/api_pb2_grpc.py" ] && [ "$(cat "$DIR/.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "$DIR"
    exit 0
fi
mkdir -p "$DIR"

# --- the proto, once (kept in $DIR/proto, so regenerating needs no network) ---
if [ ! -s "$DIR/proto/api.proto" ]; then
    deb=${YOGURT_CRI_DEB:-}
    if [ -z "$deb" ]; then
        # trixie's signing keys: bookworm's keyring knows them from 2023.3+deb12u2 on.
        if [ ! -e /usr/share/keyrings/debian-archive-trixie-automatic.gpg ]; then
            log "installing debian-archive-keyring"
            apt-get update -qq >&2
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debian-archive-keyring >&2
        fi
        # The host's own mirror (first source for its suite), so no registry
        # host is hard-coded here; private apt config, lists and caches.
        mirror=$(bash "$HERE/apt-sources.sh" | head -n1 | cut -f1)
        [ -n "$mirror" ] || { log "no apt source found in /etc/apt"; exit 1; }
        log "using $mirror $SUITE"
        A=$DIR/apt
        mkdir -p "$A/debs"
        echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $SUITE main" >"$A/sources.list"
        bash "$HERE/apt-private.sh" "$A" apt-get update -qq >&2
        rm -f "$A/debs/"*.deb
        (cd "$A/debs" && bash "$HERE/apt-private.sh" "$A" apt-get download -qq "$PKG" >&2)
        deb=$(ls "$A/debs/"*.deb | head -n1)
    fi
    log "extracting api.proto from ${deb##*/}"
    rm -rf "$DIR/proto.tmp"
    mkdir -p "$DIR/proto.tmp"
    dpkg-deb --fsys-tarfile "$deb" | tar -x -O "$PROTO_IN_DEB" >"$DIR/proto.tmp/api.proto.orig"
    # gogoproto: one import and file-level options, all on single lines.
    grep -v gogoproto "$DIR/proto.tmp/api.proto.orig" >"$DIR/proto.tmp/api.proto"
    grep -q '^package runtime.v1;' "$DIR/proto.tmp/api.proto" || { log "unexpected api.proto in $deb"; exit 1; }
    printf '%s\n' "${deb##*/}" >"$DIR/proto.tmp/SOURCE"
    rm -f "$DIR/proto.tmp/api.proto.orig"
    rm -rf "$DIR/proto" && mv "$DIR/proto.tmp" "$DIR/proto"
    rm -rf "$DIR/apt"   # lists and the .deb: not needed once the proto is kept
fi

# --- the stubs: generated and imported aside, then swapped in ---
log "generating stubs with $stamp"
rm -rf "$DIR/out.tmp"
mkdir -p "$DIR/out.tmp"
"$PY" -m grpc_tools.protoc -I "$DIR/proto" --python_out="$DIR/out.tmp" --grpc_python_out="$DIR/out.tmp" \
    "$DIR/proto/api.proto" >&2
(cd "$DIR/out.tmp" && PYTHONDONTWRITEBYTECODE=1 "$PY" -c \
    'import api_pb2, api_pb2_grpc; api_pb2_grpc.RuntimeServiceStub; api_pb2.RunPodSandboxRequest') >&2
mv "$DIR/out.tmp/api_pb2.py" "$DIR/out.tmp/api_pb2_grpc.py" "$DIR/"
rm -rf "$DIR/out.tmp"
echo "$stamp" >"$DIR/.stamp"
log "stubs in $DIR (proto from $(cat "$DIR/proto/SOURCE"))"
echo "$DIR"
