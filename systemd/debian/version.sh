#!/usr/bin/env bash
# The package version of a commit: pyproject's version, then +git<commits>.g<hash>.
#   systemd/debian/version.sh [REF]      (default HEAD; run inside the repository)
# The commit count grows with every commit on a branch, so a later commit's package is an
# upgrade of an earlier one's (dpkg compares 0.1.0+git120 < 0.1.0+git121); the hash names
# the exact source. The same string is a valid PEP 440 local version, so the Python
# distribution inside the package carries it too (hanjulloctl --version).
set -euo pipefail
ref=${1:-HEAD}
base=$(git show "$ref:pyproject.toml" |
	/usr/bin/python3 -c 'import sys, tomllib; print(tomllib.load(sys.stdin.buffer)["project"]["version"])')
echo "${base}+git$(git rev-list --count "$ref").g$(git rev-parse --short=10 "$ref")"
