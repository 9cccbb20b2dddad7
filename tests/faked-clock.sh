#!/usr/bin/env bash
# Run tests as if the wall clock read another time (Debian's libfaketime):
#
#   tests/faked-clock.sh [--machine] '2026-12-31 23:58 +0900' tests/integration/test_dispatch.py ...
#
# One relative offset (target - now) is given to pytest and everything it starts (the
# daemon, the simulator, the command-line tools), so they all agree on the faked "now".
# An absolute "@" start would restart the clock in every new process.
#
# By default the database servers keep the real clock (tests/services.py starts them
# without libfaketime): stricter than a machine whose clock really reads that time, it
# shows every place that mixes a database timestamp with the process's clock.
# With --machine, PostgreSQL and MariaDB are restarted under the same offset first, so every
# process agrees, as on a node whose clock really reads that time; on exit they are
# restarted on the real clock. Redis keeps the real clock (libfaketime cannot start it; the
# node only gives it relative expiry times).
# Takes the integration-test lock (not inherited by what the tests start).
set -euo pipefail
cd "$(dirname "$0")/.."
machine=${HANJULLO_FAKED_MACHINE:-0}
if [ "${1:-}" = --machine ]; then machine=1; shift; fi
[ $# -ge 2 ] || { echo "usage: $0 [--machine] 'YYYY-MM-DD HH:MM[:SS] +ZZZZ' PYTEST-ARGS..." >&2; exit 2; }
command -v faketime >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null
}
if [ -z "${HANJULLO_FAKED_CLOCK_LOCKED:-}" ]; then
  HANJULLO_FAKED_CLOCK_LOCKED=1 HANJULLO_FAKED_MACHINE=$machine \
    exec flock -o /tmp/hanjullo-integration.lock "$PWD/tests/faked-clock.sh" "$@"
fi
target=$(date -d "$1" +%s)
shift
offset=$((target - $(date +%s)))
sign=$( ((offset >= 0)) && echo + || true)
echo "faked-clock: tests run at $(date -d "@$target" '+%F %T %Z') = $(TZ=Asia/Seoul date -d "@$target" '+%F %T KST') (offset ${sign}${offset} s)$( ((machine)) && echo ', servers too' || true)" >&2
if ((machine)); then
  restore() { env -u LD_PRELOAD -u FAKETIME -u HANJULLO_FAKED_SERVERS .venv/bin/python -m tests.services restart; }
  trap restore EXIT
  export HANJULLO_FAKED_SERVERS=1
  faketime -f "${sign}${offset}" .venv/bin/python -m tests.services restart
  # The servers must really read the faked time (a wrapper that cleans the environment
  # would silently leave one on the real clock).
  want=$(faketime -f "${sign}${offset}" date +%s)
  pg=$(psql -h 127.0.0.1 -U postgres -d postgres -Atc 'SELECT extract(epoch FROM now())::bigint')
  my=$(mysql -uroot -h127.0.0.1 -Nse 'SELECT UNIX_TIMESTAMP()')
  for got in "$pg" "$my"; do
    ((got - want < 120 && want - got < 120)) || { echo "faked-clock: a server reads $got, not ~$want" >&2; exit 1; }
  done
  faketime -f "${sign}${offset}" .venv/bin/python -m pytest -p no:cacheprovider "$@"
else
  exec faketime -f "${sign}${offset}" .venv/bin/python -m pytest -p no:cacheprovider "$@"
fi
