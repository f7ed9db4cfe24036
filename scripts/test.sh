#!/usr/bin/env bash
# Runs the whole test suite: unit tests of every crate and the end-to-end scenarios in tests/,
# which start real nats-server processes.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -p tunnel-tests # extra arguments go to `cargo test`
#
# Gets a nats-server >= 2.11 through scripts/ensure-nats-server.sh (installing one under .run/
# when needed) and exports it as NATS_SERVER_BIN, which the test harness reads.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$root"

NATS_SERVER_BIN="$(scripts/ensure-nats-server.sh)"
export NATS_SERVER_BIN

exec cargo test --workspace --locked "$@"
