#!/usr/bin/env bash
# Install the Debian packages the local environment needs (default: all of them). Idempotent.
set -euo pipefail
pkgs=("$@")
# The real node: containerd, runc, CNI plugins, iptables, conntrack; its images: buildah, debootstrap.
[[ ${#pkgs[@]} -gt 0 ]] || pkgs=(prometheus postgresql openssl containerd runc containernetworking-plugins iproute2 iptables conntrack buildah debootstrap)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
echo "[deps] installing Debian packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Keep package post-install scripts from starting system services: we start our own on loopback.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then printf '#!/bin/sh\nexit 101\n' | $SUDO tee $policy >/dev/null; $SUDO chmod +x $policy; created_policy=1; fi
trap '[[ $created_policy -eq 1 ]] && $SUDO rm -f $policy' EXIT
# Another apt run (a parallel job on the same machine) holds the dpkg lock for a while: wait for it.
lock=(-o DPkg::Lock::Timeout=900)
$SUDO apt-get "${lock[@]}" update -qq
$SUDO apt-get "${lock[@]}" install -y -qq --no-install-recommends "${missing[@]}" >&2
