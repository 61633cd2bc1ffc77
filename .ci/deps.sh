#!/usr/bin/env bash
# Installs what building, testing and benchmarking e2em need, only where it
# is missing: Debian packages with apt-get, protoc plugins with go install.
set -euo pipefail

pkgs=(gcc libgl1-mesa-dev xorg-dev xvfb xdotool imagemagick protobuf-compiler haproxy nghttp2-client iptables iproute2 openssl curl)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

gobin="$(go env GOPATH)/bin"
want_go="v1.36.12"
want_grpc="1.6.2"
if ! "$gobin/protoc-gen-go" --version 2>/dev/null | grep -q "$want_go"; then
  go install "google.golang.org/protobuf/cmd/protoc-gen-go@$want_go"
fi
if ! "$gobin/protoc-gen-go-grpc" --version 2>/dev/null | grep -q "$want_grpc"; then
  go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@v$want_grpc"
fi
