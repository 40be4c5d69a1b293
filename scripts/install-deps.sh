#!/usr/bin/env bash
# Installs what the tests need from Debian's packages, once, quietly.
#   scripts/install-deps.sh protoc   protobuf-compiler (for the etcd-client dev-dependency)
#   scripts/install-deps.sh etcd     etcd-client (etcdctl 3.4), etcd-server, curl, openssl, python3-venv
set -euo pipefail

apt_install() {
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || { echo "install-deps: need root or sudo to apt-get install $*" >&2; exit 1; }
        sudo="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y -q "$@" >/dev/null 2>&1 || {
        $sudo apt-get update -q >/dev/null 2>&1
        $sudo apt-get install -y -q "$@" >/dev/null
    }
}

for what in "$@"; do
    case "$what" in
        protoc) command -v protoc >/dev/null || apt_install protobuf-compiler ;;
        etcd)
            command -v etcdctl >/dev/null || apt_install etcd-client
            command -v etcd >/dev/null || apt_install etcd-server
            command -v curl >/dev/null || apt_install curl
            # JWT keys and TLS certificates as an operator makes them (auth and compat tests).
            command -v openssl >/dev/null || apt_install openssl
            python3 -c "import venv" 2>/dev/null || apt_install python3-venv
            ;;
        *) echo "install-deps: unknown dependency $what" >&2; exit 2 ;;
    esac
done
