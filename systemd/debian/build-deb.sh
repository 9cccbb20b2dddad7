#!/usr/bin/env bash
# Build hanjullo-node_<version>_<arch>.deb from a source tree:
#   systemd/debian/build-deb.sh SRC_DIR OUT_DIR VERSION        (`make deb` runs it)
#
# dpkg-buildpackage wants debian/ at the root of the tree it builds, and this repository's
# top-level folders are fixed; so the packaging sources live in systemd/debian/ and this
# script assembles a build tree under OUT_DIR: a copy of SRC_DIR (less what git ignores)
# with the directory this script is in as its debian/. Packaging and source are separate
# arguments so that tests/packaging/deb-check.sh can package an older commit that has no
# packaging of its own.
set -euo pipefail

[ $# -eq 3 ] || { echo "usage: $0 SRC_DIR OUT_DIR VERSION" >&2; exit 2; }
src=$(cd "$1" && pwd)
mkdir -p "$2"
out=$(cd "$2" && pwd)
version=$3
packaging=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Build tools from Debian, installed once (as the Makefile installs gammu).
needed=(dpkg-dev debhelper dh-virtualenv build-essential python3-venv python3-dev libgammu-dev pkg-config)
missing=()
for pkg in "${needed[@]}"; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "build-deb: installing ${missing[*]}" >&2
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

tree="$out/tree/hanjullo-node-$version"
rm -rf "$out/tree"
mkdir -p "$tree"
tar -C "$src" --exclude-vcs --exclude-vcs-ignores --exclude=./build --exclude=./.venv -cf - . |
	tar -C "$tree" -xf -
rm -rf "$tree/debian"
cp -a "$packaging" "$tree/debian"

# The Python distribution carries the package's version, so `hanjulloctl --version` and the
# status API name this build. Exactly one `version = ` line in [project] is replaced, and
# the result is read back.
/usr/bin/python3 - "$tree/pyproject.toml" "$version" <<'PY'
import re, sys, tomllib
path, version = sys.argv[1], sys.argv[2]
text = open(path, encoding="utf-8").read()
new, count = re.subn(r'(?m)^version = "[^"]*"$', f'version = "{version}"', text)
if count != 1:
    sys.exit(f"{path}: expected one `version = ` line, found {count}")
if tomllib.loads(new)["project"]["version"] != version:
    sys.exit(f"{path}: the version line replaced is not [project]'s")
open(path, "w", encoding="utf-8").write(new)
PY

maintainer=$(sed -n 's/^Maintainer: //p' "$tree/debian/control")
cat > "$tree/debian/changelog" <<CHANGELOG
hanjullo-node ($version) bookworm; urgency=medium

  * Built from the repository at $version.

 -- $maintainer  $(date -R)
CHANGELOG

# A clean environment: Debian's tools and interpreter, not the first python3 on PATH (pyenv
# here); pip's own settings (an index, a certificate) pass through.
env_keep=(PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$HOME" LANG=C.UTF-8)
while IFS='=' read -r name _; do
	case $name in PIP_*|http_proxy|https_proxy|no_proxy) env_keep+=("$name=${!name}") ;; esac
done < <(env)
(cd "$tree" && env -i "${env_keep[@]}" dpkg-buildpackage -b -us -uc >"$out/build.log" 2>&1) || {
	tail -n 40 "$out/build.log" >&2
	echo "build-deb: dpkg-buildpackage failed; the whole log is $out/build.log" >&2
	exit 1
}
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
deb="hanjullo-node_${version}_${arch}.deb"
mv "$out/tree/$deb" "$out/$deb"
rm -rf "$out/tree"
echo "$out/$deb"
