#!/usr/bin/env bash
# Run tests as if the wall clock read another time (Debian's libfaketime):
#
#   tests/faked-clock.sh '2026-12-31 23:58 +0900' tests/integration/test_dispatch.py ...
#
# One relative offset (target - now) is given to pytest and everything it starts (the
# daemon, the simulator, the command-line tools), so they all agree on the faked "now".
# An absolute "@" start would restart the clock in every new process. The database servers
# keep the real clock (tests/services.py starts them without libfaketime), which makes this
# stricter than a machine whose clock really reads that time: any place that mixes a
# database timestamp with the process's clock shows up as a failure.
# Takes the integration-test lock (not inherited by what the tests start).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: $0 'YYYY-MM-DD HH:MM[:SS] +ZZZZ' PYTEST-ARGS..." >&2; exit 2; }
command -v faketime >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null
}
target=$(date -d "$1" +%s)
shift
offset=$((target - $(date +%s)))
sign=$( ((offset >= 0)) && echo + || true)
echo "faked-clock: tests run at $(date -d "@$target" '+%F %T %Z') = $(TZ=Asia/Seoul date -d "@$target" '+%F %T KST') (offset ${sign}${offset} s)" >&2
exec flock -o /tmp/hanjullo-integration.lock \
  faketime -f "${sign}${offset}" .venv/bin/python -m pytest -p no:cacheprovider "$@"
