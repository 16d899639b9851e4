#!/usr/bin/env bash
# Build the pinned Kubernetes control plane, the real node's kubelet and kube-proxy, etcd, kubectl and KWOK from the
# Go module proxy.
# Output: $MODELWARDEN_CACHE/k8s/<version>/bin/{kube-apiserver,kube-controller-manager,kube-scheduler,kubectl,
#         kubelet,kube-proxy,etcd,kwok}
# Idempotent: a version that is already built is left alone (a `.complete` stamp marks a finished build); a cache
# from before a binary was added to the list gets only the missing ones compiled.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.34.4}"
KWOK_VERSION="${KWOK_VERSION:-v0.7.0}"
CACHE="${MODELWARDEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelwarden}"
OUT="$CACHE/k8s/$K8S_VERSION-kwok-$KWOK_VERSION"
BIN="$OUT/bin"

log() { printf '[build-k8s %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
missing=()
for cmd in "${K8S_CMDS[@]}" etcd kwok; do [[ -x "$BIN/$cmd" ]] || missing+=("$cmd"); done
if [[ -f "$OUT/.complete" && ${#missing[@]} -eq 0 ]]; then
  echo "$BIN"
  exit 0
fi
# Only a finished build's binaries count; a half-built one is rebuilt from scratch.
if [[ ! -f "$OUT/.complete" ]]; then missing=("${K8S_CMDS[@]}" etcd kwok); fi
rm -f "$OUT/.complete"
wanted() { [[ " ${missing[*]} " == *" $1 "* ]]; }
log "to build: ${missing[*]}"
command -v go >/dev/null || { log "go is not installed; install Go 1.24+ first"; exit 1; }

mkdir -p "$BIN"
WORK="$OUT/src"
rm -rf "$WORK"
mkdir -p "$WORK"
cd "$WORK"
export GOFLAGS="${GOFLAGS:-} -mod=mod"
export GOTOOLCHAIN=local

minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
patch="${K8S_VERSION##*.}"
staging="v0.${minor}.${patch}"

log "resolving k8s.io/kubernetes@$K8S_VERSION (staging modules at $staging)"
gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')

# Every k8s.io/* module that kubernetes' go.mod pins at v0.0.0 is a staging module it replaces with
# ./staging/src/...; outside that repo we must replace it with the published tag instead.
mapfile -t staged < <(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1} $2 ~ /^k8s\.io\// && $3 == "v0.0.0" {print $2}' "$gomod" | sort -u)
log "${#staged[@]} staging modules to replace"

{
  echo "module modelwarden.local/k8sbuild"
  echo
  echo "go 1.24"
  echo
  echo "require k8s.io/kubernetes $K8S_VERSION"
  echo
  echo "replace ("
  for m in "${staged[@]}"; do echo "	$m => $m $staging"; done
  echo ")"
} > go.mod
cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
GO

log "downloading modules (go mod tidy)"
go mod tidy

pkg=k8s.io/component-base/version
cgo=k8s.io/client-go/pkg/version
ldflags="-s -w"
for p in "$pkg" "$cgo"; do
  ldflags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
  ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done

# KWOK pins its own k8s.io/* versions, so it shares few compiled packages with the rest: it compiles beside them
# (the Kubernetes commands link one at a time, leaving a core idle that KWOK's compile takes).
kwok_pid=
if wanted kwok; then
  log "compiling kwok $KWOK_VERSION (beside the Kubernetes commands)"
  CGO_ENABLED=0 GOBIN="$BIN" GOFLAGS= go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" &
  kwok_pid=$!
fi

# One `go build` for every command: one action graph, so one command's link overlaps the next one's compile.
pkgs=()
for cmd in "${K8S_CMDS[@]}"; do wanted "$cmd" && pkgs+=("k8s.io/kubernetes/cmd/$cmd"); done
if ((${#pkgs[@]})); then
  log "compiling ${pkgs[*]##*/} (cold: ~15 min on 2 quiet cores, most of it kube-apiserver's packages)"
  CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$BIN/" "${pkgs[@]}"
fi

if wanted etcd; then
  log "compiling etcd ($(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3))"
  CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3
fi

if [[ -n "$kwok_pid" ]]; then
  wait "$kwok_pid" || { log "kwok did not build"; exit 1; }
fi

"$BIN/kube-apiserver" --version >&2
touch "$OUT/.complete"
log "done: $BIN"
echo "$BIN"
