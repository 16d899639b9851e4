#!/usr/bin/env bash
# Build one of our small Go tools (hack/<name>/, each its own module with pinned dependencies) from the Go
# module proxy. Usage: hack/build-go-tool.sh <name>
# Output: $MODELWARDEN_CACHE/go-tools/<name>/<source hash>/<name> (the path is printed on stdout; progress goes
# to stderr). The directory is named after a hash of the tool's go.mod, go.sum and *.go, so an edited tool is
# rebuilt and an unchanged one is reused (a `.complete` stamp marks a finished build).
set -euo pipefail

name="${1:?usage: hack/build-go-tool.sh <name>}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$HERE/$name"
[[ -f "$SRC/go.mod" ]] || { echo "no Go tool at hack/$name (no go.mod)" >&2; exit 1; }
CACHE="${MODELWARDEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelwarden}"
hash=$(cd "$SRC" && cat go.mod go.sum $(ls *.go | sort) | sha256sum | cut -c1-16)
OUT="$CACHE/go-tools/$name/$hash"

log() { printf '[build-%s %(%H:%M:%S)T] %s\n' "$name" -1 "$*" >&2; }

if [[ -f "$OUT/.complete" && -x "$OUT/$name" ]]; then
  echo "$OUT/$name"
  exit 0
fi
command -v go >/dev/null || { log "go is not installed; install Go 1.24+ first"; exit 1; }
mkdir -p "$OUT"
rm -f "$OUT/.complete"
# The toolchain on this machine builds it; go.sum pins every dependency, so nothing is resolved anew.
export GOTOOLCHAIN=local GOFLAGS=-mod=readonly CGO_ENABLED=0

log "compiling hack/$name from the Go module proxy (cold: ~1-2 min on 2 busy cores)"
start=$SECONDS
(cd "$SRC" && go build -trimpath -o "$OUT/$name" .)
touch "$OUT/.complete"
log "done in $((SECONDS - start))s: $OUT/$name"
echo "$OUT/$name"
