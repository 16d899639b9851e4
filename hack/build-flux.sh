#!/usr/bin/env bash
# Build Flux's source-controller and kustomize-controller from the Go module proxy at pinned versions.
# `make test` starts it in the background before the lint and unit tests; the Flux tests wait for it (a second
# caller blocks on the lock below until the first build is done, then finds it complete). Numbers (cold, after
# the Kubernetes build, warm) in bench/README.md.
# Output: $MODELWARDEN_CACHE/flux/<sc>-<kc>/bin/{source-controller,kustomize-controller} (the bin path is
# printed on stdout; progress goes to stderr). Idempotent: a finished build has a `.complete` stamp.
# Pinned at v1.9.0 (Go 1.26): the module proxy answers 403 "This module version is not available" for
# fluxcd/pkg modules that source-controller v1.9.4-v1.10.1 and kustomize-controller v1.10.x require
# (pkg/artifact v0.18.1+, pkg/masktoken v0.10.0, pkg/apis/crypto v0.5.0, pkg/spiffe v0.2.0, ...).
# v1.10.x needs Go 1.27: set FLUX_GOTOOLCHAIN=go1.27.4 (the module proxy serves that toolchain) with them.
set -euo pipefail

SOURCE_CONTROLLER_VERSION="${SOURCE_CONTROLLER_VERSION:-v1.9.0}"
KUSTOMIZE_CONTROLLER_VERSION="${KUSTOMIZE_CONTROLLER_VERSION:-v1.9.0}"
FLUX_GOTOOLCHAIN="${FLUX_GOTOOLCHAIN:-local}"
CACHE="${MODELWARDEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelwarden}"
OUT="$CACHE/flux/sc-$SOURCE_CONTROLLER_VERSION-kc-$KUSTOMIZE_CONTROLLER_VERSION"
BIN="$OUT/bin"

log() { printf '[build-flux %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9
if [[ -f "$OUT/.complete" ]]; then
  echo "$BIN"
  exit 0
fi
command -v go >/dev/null || { log "go is not installed"; exit 1; }
export GOTOOLCHAIN="$FLUX_GOTOOLCHAIN" GOFLAGS=-mod=mod CGO_ENABLED=0
log "building with GOTOOLCHAIN=$GOTOOLCHAIN ($(go version))"
mkdir -p "$BIN"

build() {  # module version binary
  local module=$1 version=$2 binary=$3 work="$OUT/src-$3"
  rm -rf "$work"; mkdir -p "$work"
  local gomod
  gomod=$(cd "$work" && go mod download -json "$module@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  # The controller's own replace directives (its ./api module, pinned forks) must hold in our wrapper module too;
  # `./api` becomes the published api module of the same version.
  {
    echo "module modelwarden.local/fluxbuild/$binary"
    echo
    awk '/^go [0-9]/ {print; exit}' "$gomod"
    echo
    echo "require $module $version"
    echo "require $module/api $version"
    awk -v m="$module" -v v="$version" '
      /^replace \($/ {inblock=1; print; next}
      inblock && /^\)/ {inblock=0; print; next}
      inblock {print; next}
      /^replace / && $0 !~ /=> \.\// {print}
    ' "$gomod"
  } > "$work/go.mod"
  log "compiling $binary $version"
  local start=$SECONDS
  (cd "$work" && go mod download "$module" && go build -trimpath -ldflags "-s -w" -o "$BIN/$binary" "$module")
  log "$binary built in $((SECONDS - start))s"
}

build github.com/fluxcd/source-controller "$SOURCE_CONTROLLER_VERSION" source-controller
build github.com/fluxcd/kustomize-controller "$KUSTOMIZE_CONTROLLER_VERSION" kustomize-controller
touch "$OUT/.complete"
echo "$BIN"
