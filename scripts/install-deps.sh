#!/usr/bin/env bash
# Installs what building and testing Loupe needs on a fresh Debian machine (idempotent, quiet
# when everything is there already).
set -euo pipefail
APT_PKGS=(libbpf-dev libelf-dev zlib1g-dev libjemalloc-dev bpftool iproute2 util-linux curl wrk nginx-light linux-libc-dev procps
          dnsmasq-base knot-dnsutils dnsperf nghttp2-client iperf3 prometheus
          chromium chromium-driver fonts-dejavu-core libcap2-bin debootstrap)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# kubectl drives the test Kubernetes API server (any recent kubectl; Debian's kubernetes-client
# when none is installed).
if ! command -v kubectl >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq kubernetes-client >/dev/null
fi
# Test clients and servers: pytest, python h2 (crafted HTTP/2), grpcio (a real gRPC client and
# server), PyYAML (inventories and kubeconfigs).
# selenium drives Debian's headless Chromium (chromium-driver) for `loupe ui`'s page.
# kubernetes-validate checks deploy/kubernetes against the Kubernetes schemas it ships.
python3 -c 'import pytest, h2, grpc, grpc_tools, yaml, selenium, kubernetes_validate' 2>/dev/null || \
  pip install -q pytest h2 grpcio grpcio-tools pyyaml selenium kubernetes-validate
