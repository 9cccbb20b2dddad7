#!/usr/bin/env bash
# `make deb-check`: the Debian package installs, upgrades, is removed and purged as it says,
# in fresh minimal Debian roots (mmdebstrap), one PASS/FAIL line per check; exit 1 on any FAIL.
#
#   DEB_CHECK_FROM=REF   the commit whose package is upgraded from (default HEAD~1); its own
#                        packaging (systemd/debian/build-deb.sh) builds it, or this tree's
#                        packaging if it has none
#   DEB_CHECK_KEEP=1     keep the roots under build/deb-check/ to look around afterwards
#   DEB_CHECK_MIRROR=URL the Debian mirror the roots are made from
#
# The roots have no systemd as PID 1, so nothing can really start. /run/systemd/system
# exists in them (the maintainer scripts then behave as on a running system) and
# /usr/sbin/policy-rc.d records every start, stop or restart that deb-systemd-invoke is
# asked for and refuses it: the recorded list is what the package's scripts request.
# systemctl is run from outside with --root (inside, /run/systemd/system sends it looking
# for a manager to talk to).
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
work="$repo/build/deb-check"
from=${DEB_CHECK_FROM:-HEAD~1}
mirror=${DEB_CHECK_MIRROR:-http://deb.debian.org/debian}
ACTIONS=/var/log/policy-rc.d.actions # inside a root
UNIT=hanjullo-noded.service

# Mounts (/proc in each root) live in a mount namespace of this script's own, so they go
# away with it whatever happens.
if [ -z "${DEB_CHECK_NAMESPACE:-}" ]; then
	exec env DEB_CHECK_NAMESPACE=1 unshare --mount --propagation private bash "$0" "$@"
fi

started=$SECONDS
failures=0
pass() { echo "PASS $*"; }
fail() {
	echo "FAIL $*"
	failures=$((failures + 1))
}
die() {
	echo "FAIL $*"
	echo "deb-check: stopped after $((SECONDS - started)) s"
	exit 1
}
# check WHAT COMMAND...: PASS if the command succeeds, else FAIL with its output.
check() {
	local what=$1 out
	shift
	if out=$("$@" 2>&1); then pass "$what"; else
		fail "$what"
		[ -n "$out" ] && sed 's/^/    /' <<<"$out"
	fi
}
# same WHAT ACTUAL EXPECTED
same() {
	if [ "$2" == "$3" ]; then pass "$1"; else
		fail "$1"
		printf '    expected: %q\n    actual:   %q\n' "$3" "$2"
	fi
}

in_root() { # in_root ROOT COMMAND...: run in the root with a plain environment
	local root=$1
	shift
	chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
}
actions() { # the starts/stops/restarts requested since the last call, one per line
	local root=$1 list
	list=$(cat "$root$ACTIONS" 2>/dev/null)
	: >"$root$ACTIONS"
	echo "$list"
}
owner_mode() { in_root "$1" stat -c '%U:%G %a' "$2" 2>&1; }
sum() { in_root "$1" sha256sum "$2" 2>&1 | cut -d' ' -f1; }

cleanup() {
	for root in "$work"/root-*; do
		[ -d "$root" ] || continue
		mountpoint -q "$root/proc" && umount "$root/proc"
		[ -n "${DEB_CHECK_KEEP:-}" ] || rm -rf --one-file-system "$root"
	done
}
trap cleanup EXIT

# ---- the two packages -------------------------------------------------------------------
cleanup
rm -rf --one-file-system "$work"
mkdir -p "$work"
cd "$repo" || die "no repository at $repo"
git rev-parse --verify --quiet "$from^{commit}" >/dev/null || die "DEB_CHECK_FROM=$from is not a commit"
new_version=$(bash systemd/debian/version.sh HEAD) || die "version of HEAD"
old_version=$(bash systemd/debian/version.sh "$from") || die "version of $from"
dpkg --compare-versions "$new_version" gt "$old_version" ||
	die "this tree's version $new_version does not sort after $from's $old_version"

echo "deb-check: building $new_version (this tree)"
new_deb=$(bash systemd/debian/build-deb.sh "$repo" "$work/new" "$new_version" | tail -n1) ||
	die "build of this tree's package"
mkdir -p "$work/old-src"
git archive "$from" | tar -C "$work/old-src" -xf - || die "git archive $from"
old_builder="$work/old-src/systemd/debian/build-deb.sh"
if [ -f "$old_builder" ]; then
	echo "deb-check: building $old_version ($from, with its own packaging)"
else
	echo "deb-check: building $old_version ($from has no packaging: this tree's packages it)"
	old_builder="$repo/systemd/debian/build-deb.sh"
fi
old_deb=$(bash "$old_builder" "$work/old-src" "$work/old" "$old_version" | tail -n1) ||
	die "build of $from's package"
echo "deb-check: packages built after $((SECONDS - started)) s"

# ---- fresh minimal roots ----------------------------------------------------------------
command -v mmdebstrap >/dev/null || {
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null
} || die "installing mmdebstrap"
base="$work/root-base"
mmdebstrap --quiet --variant=minbase --mode=root bookworm "$base" "deb $mirror bookworm main" ||
	die "mmdebstrap of a minimal bookworm root"
cp /etc/resolv.conf "$base/etc/resolv.conf"
cat >"$base/usr/sbin/policy-rc.d" <<EOF
#!/bin/sh
# deb-check's recorder: deb-systemd-invoke asks "policy-rc.d UNIT ACTION" before it acts.
echo "\$1 \$2" >>$ACTIONS
exit 101
EOF
chmod 0755 "$base/usr/sbin/policy-rc.d"
mkdir -p "$base/run/systemd/system"
mount -t proc proc "$base/proc" || die "mounting /proc in the root"
in_root "$base" apt-get update -qq || die "apt-get update in the root"
umount "$base/proc"
# Two copies: one for install, remove and purge; one for the upgrade.
cp -a "$base" "$work/root-fresh" && cp -a "$base" "$work/root-upgrade" || die "copying the root"
rm -rf --one-file-system "$base"
echo "deb-check: roots ready after $((SECONDS - started)) s"

# install_deps ROOT DEB: the package's Depends, resolved by apt from Debian's archive (their
# own scripts' requests are not the package's, so they are not recorded).
install_deps() {
	local depends
	depends=$(dpkg-deb -f "$2" Depends)
	in_root "$1" apt-get satisfy -y -qq --no-install-recommends "$depends" >"$work/apt.log" 2>&1 ||
		{ tail -n 20 "$work/apt.log"; return 1; }
	actions "$1" >/dev/null
}
dpkg_in() { # dpkg_in ROOT ARGS...: dpkg in the root, its output kept for a failure
	in_root "$@" >"$work/dpkg.log" 2>&1 || {
		sed 's/^/    /' "$work/dpkg.log"
		return 1
	}
}
# step ROOT WHAT EXPECTED WHY DPKG_ARGS...: one dpkg operation, and a check that its
# maintainer scripts requested exactly EXPECTED (lines of "UNIT ACTION"; empty: nothing).
step() {
	local root=$1 what=$2 expected=$3 why=$4 got
	shift 4
	dpkg_in "$root" dpkg "$@" || {
		fail "$what: dpkg $*"
		return 1
	}
	got=$(actions "$root")
	echo "INFO $what requested: ${got:-nothing}"
	same "$what requests ${expected:-nothing}: $why" "$got" "$expected"
}

# ---- install, remove, purge -------------------------------------------------------------
root="$work/root-fresh"
mount -t proc proc "$root/proc" || die "mounting /proc"
cp "$new_deb" "$root/tmp/new.deb"
install_deps "$root" "$new_deb" || die "installing the package's dependencies"
step "$root" install "" "not enabled, and no configuration yet" -i /tmp/new.deb ||
	die "installing $new_version"
same "dpkg has $new_version installed" \
	"$(in_root "$root" dpkg-query -W -f='${Status} ${Version}' hanjullo-node)" \
	"install ok installed $new_version"
same "hanjulloctl --version is the package's version" \
	"$(in_root "$root" hanjulloctl --version 2>&1)" "hanjulloctl $new_version"
for cmd in hanjullo-noded hanjulloctl hanjullo-sim; do
	check "$cmd is on PATH and runs" in_root "$root" sh -c "command -v $cmd && $cmd --help"
done
venv=/opt/venvs/hanjullo-node
same "the virtual environment runs Debian's python3" \
	"$(in_root "$root" readlink -f $venv/bin/python)" "/usr/bin/python3.11"
check "no script in the environment points at the build machine's interpreter or tree" \
	in_root "$root" sh -c "! grep -rIl -e pyenv -e /build/ $venv/bin"
check "the environment's interpreter is found in /usr/bin" grep -qx 'home = /usr/bin' "$root$venv/pyvenv.cfg"
check "the compiled dependencies load (gammu, asyncpg, pydantic-core, serial)" \
	in_root "$root" $venv/bin/python -c 'import gammu, asyncpg, pydantic_core, serial_asyncio_fast, aiomysql'
same "/etc/hanjullo/node.toml.example is a conffile" \
	"$(in_root "$root" dpkg-query -W -f='${Conffiles}' hanjullo-node | awk '{print $1}')" \
	"/etc/hanjullo/node.toml.example"
check "the udev rule is installed" test -f "$root/lib/udev/rules.d/99-hanjullo-modems.rules"
check "INSTALL.md is where the unit's Documentation= points" \
	test -f "$root/usr/share/doc/hanjullo-node/INSTALL.md"

IFS=: read -r _ _ uid _ _ home shell <<<"$(in_root "$root" getent passwd hanjullo)"
check "hanjullo is a system user (uid $uid < 1000)" test "${uid:-1000}" -lt 1000
same "hanjullo's home and shell" "$home $shell" "/var/lib/hanjullo /usr/sbin/nologin"
same "hanjullo's groups" "$(in_root "$root" id -nG hanjullo | tr ' ' '\n' | sort | xargs)" \
	"dialout hanjullo"
same "/etc/hanjullo: root:hanjullo 750" "$(owner_mode "$root" /etc/hanjullo)" "root:hanjullo 750"
same "/var/lib/hanjullo: hanjullo:hanjullo 750" "$(owner_mode "$root" /var/lib/hanjullo)" \
	"hanjullo:hanjullo 750"
same "/run/hanjullo: hanjullo:hanjullo 750" "$(owner_mode "$root" /run/hanjullo)" \
	"hanjullo:hanjullo 750"

check "systemd-analyze verify accepts the unit" \
	in_root "$root" sh -c "out=\$(systemd-analyze verify /lib/systemd/system/$UNIT 2>&1); echo \"\$out\"; ! echo \"\$out\" | grep -q ."
check "the unit waits for /etc/hanjullo/node.toml" \
	grep -qx 'ConditionPathExists=/etc/hanjullo/node.toml' "$root/lib/systemd/system/$UNIT"
same "the unit is not enabled by the installation" \
	"$(systemctl --root="$root" is-enabled $UNIT 2>&1)" "disabled"

same "hanjulloctl config example prints the installed example" \
	"$(in_root "$root" hanjulloctl config example 2>&1)" "$(cat "$root/etc/hanjullo/node.toml.example")"
in_root "$root" cp /etc/hanjullo/node.toml.example /etc/hanjullo/node.toml
check "hanjulloctl config check accepts the example as node.toml" \
	in_root "$root" hanjulloctl config check
check "the daemon's user can read it" \
	in_root "$root" setpriv --reuid=hanjullo --regid=hanjullo --init-groups hanjulloctl config check
check "another user cannot" \
	in_root "$root" sh -c '! setpriv --reuid=nobody --regid=nogroup --clear-groups hanjulloctl config check'
config_sum=$(sum "$root" /etc/hanjullo/node.toml)

step "$root" remove "$UNIT stop" "no daemon left running from deleted files" --remove hanjullo-node
check "remove takes the commands, the environment and the unit away" \
	sh -c "! ls -d $root/usr/bin/hanjullo* $root$venv $root/lib/systemd/system/$UNIT 2>/dev/null"
same "remove keeps node.toml" "$(sum "$root" /etc/hanjullo/node.toml)" "$config_sum"
check "remove keeps the example (a conffile) and the state directory" \
	test -f "$root/etc/hanjullo/node.toml.example" -a -d "$root/var/lib/hanjullo"

step "$root" purge "" "the daemon was stopped by remove" --purge hanjullo-node
check "purge removes /etc/hanjullo, /var/lib/hanjullo and /run/hanjullo" \
	sh -c "! ls -d $root/etc/hanjullo $root/var/lib/hanjullo $root/run/hanjullo 2>/dev/null"
same "dpkg no longer knows the package" \
	"$(in_root "$root" dpkg-query -W -f='${Status}' hanjullo-node 2>/dev/null)" ""
check "purge leaves the hanjullo user (Debian keeps system users)" \
	in_root "$root" getent passwd hanjullo
umount "$root/proc"

# ---- upgrade from the previous commit's package -----------------------------------------
root="$work/root-upgrade"
mount -t proc proc "$root/proc" || die "mounting /proc"
cp "$old_deb" "$root/tmp/old.deb"
cp "$new_deb" "$root/tmp/new.deb"
install_deps "$root" "$old_deb" || die "installing $old_version's dependencies"
dpkg_in "$root" dpkg -i /tmp/old.deb || die "dpkg -i $old_version"
got=$(actions "$root")
echo "INFO install of $old_version requested: ${got:-nothing}"
# The operator's configuration: the example with edits (made through the config model, as
# every test's edits are), then enabled as the install notes say.
"$repo/.venv/bin/python" - "$root/etc/hanjullo/node.toml.example" "$root/etc/hanjullo/node.toml" <<'PY' ||
import sys
from pathlib import Path

from tests.config_edits import settings

source, target = map(Path, sys.argv[1:])
target.write_text(settings(source.read_text(), {"node": {"id": "node-07", "name": "upgraded"}}))
PY
	die "editing node.toml"
config_sum=$(sum "$root" /etc/hanjullo/node.toml)
systemctl --root="$root" --quiet enable $UNIT || die "systemctl enable in the root"

install_deps "$root" "$new_deb" || die "installing $new_version's dependencies"
step "$root" "upgrade from $old_version" "$UNIT try-restart" \
	"a running daemon restarts once the new files are in; a stopped one stays stopped" \
	-i /tmp/new.deb || die "upgrading $old_version to $new_version"
same "upgrade keeps the edited node.toml" "$(sum "$root" /etc/hanjullo/node.toml)" "$config_sum"
same "the edited node.toml still checks" "$(in_root "$root" hanjulloctl config check 2>&1)" \
	"/etc/hanjullo/node.toml: ok"
same "hanjulloctl --version is the new version" \
	"$(in_root "$root" hanjulloctl --version 2>&1)" "hanjulloctl $new_version"
same "the operator's enable survives the upgrade" \
	"$(systemctl --root="$root" is-enabled $UNIT 2>&1)" "enabled"
same "/etc/hanjullo is still root:hanjullo 750" "$(owner_mode "$root" /etc/hanjullo)" \
	"root:hanjullo 750"
umount "$root/proc"

echo "deb-check: $((SECONDS - started)) s, $failures failure(s)"
[ "$failures" -eq 0 ]
