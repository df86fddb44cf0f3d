#!/bin/sh
# System packages the test-suite needs beyond Python ones (idempotent; run as root in CI).
set -eu

_apt_updated=""
apt_install() {
    # apt_install COMMAND PACKAGE: install PACKAGE unless COMMAND is already available.
    if command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; then
        return 0
    fi
    if [ -z "$_apt_updated" ]; then
        apt-get update
        _apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$2"
}

# PostgreSQL backend: pgbouncer in transaction-pooling mode in front of a private server
# (tests/plugins/postgres_servers.py). The package's system service is not used.
apt_install pgbouncer pgbouncer

# Redis backend: private redis-server instances and a 3-master cluster (redis-cli --cluster)
# for the kill, restart and cluster tests. Machines of this kind ship them; install if not.
apt_install redis-server redis-server

# `txlock top`: tests/test_top.py drives the live view in a real terminal (a detached tmux
# session on a private socket, read with capture-pane).
apt_install tmux tmux

# Fault lab, partition scenario (tests/lab/test_partition.py, tests/lab/netns.py): nft rules
# inside network namespaces the test creates cut a holder off from its private server.
apt_install nft nftables

# Fault lab, clock jumps (tests/lab/test_clock.py): libfaketime steps one worker's wall clock.
apt_install faketime faketime
