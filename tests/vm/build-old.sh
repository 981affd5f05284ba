#!/usr/bin/env bash
# Builds an older qbd-master and qbdctl from this repository's history, for the upgrade test
# (tests/vm/guest/attach_upgrade.sh: a device attached by the old binary survives a switch to the
# current one).
#   tests/vm/build-old.sh
# The commit is $QBD_UPGRADE_FROM (default 83f412f8c36a). Its tree (git archive: no work tree, no
# checkout of this one) is built in release mode in $QBD_VM_CACHE/old-<full hash>/src (QBD_VM_CACHE
# defaults to build/vm); the two binaries end up in old-<full hash>/bin and the tree is removed.
# Cached: when bin/ holds both binaries nothing is built. The old tree needs the packages
# scripts/install-deps.sh installs, nothing else.
# Prints the bin directory on standard output; exit status 1 with a message on standard error
# when the commit is not in the repository (a shallow clone, a tarball) or its build fails.
set -uo pipefail
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH

src=$(cd "$(dirname "$0")/../.." && pwd)
cache=${QBD_VM_CACHE:-$src/build/vm}
from=${QBD_UPGRADE_FROM:-83f412f8c36a}

die() {
  echo "vm/build-old.sh: $*" >&2
  exit 1
}

command -v git >/dev/null || die "git is missing: the old binaries are built from git history"
commit=$(git -C "$src" rev-parse --verify --quiet "$from^{commit}" 2>/dev/null) ||
  die "commit $from is not in the repository at $src (a shallow clone? git fetch --unshallow)"
mkdir -p "$cache"
dir=$(cd "$cache" && pwd)/old-$commit
bins=(qbd-master qbdctl)

have_bins() {
  local b
  for b in "${bins[@]}"; do [ -x "$dir/bin/$b" ] || return 1; done
}
if have_bins; then
  echo "$dir/bin"
  exit 0
fi

mkdir -p "$dir"
# Two test runs at once would build into the same tree.
exec 9>"$dir/lock"
flock 9
if have_bins; then
  echo "$dir/bin"
  exit 0
fi
rm -rf "$dir/src" "$dir/bin.tmp"
mkdir -p "$dir/src" "$dir/bin.tmp"
log=$dir/build.log
start=$SECONDS
git -C "$src" archive "$commit" | tar -x -C "$dir/src" ||
  die "git archive $commit failed"
# Only the two binaries' targets: `make all` would also run scripts/install-deps.sh.
if ! make -C "$dir/src" -j2 MODE=release build/release/bin/qbd-master build/release/bin/qbdctl \
  >"$log" 2>&1; then
  tail -n 30 "$log" | sed 's/^/    | /' >&2
  die "building $commit failed (log: $log)"
fi
for b in "${bins[@]}"; do
  cp "$dir/src/build/release/bin/$b" "$dir/bin.tmp/$b" || die "cp $b failed"
done
# bin/ appears complete or not at all: have_bins never sees half of it.
mv "$dir/bin.tmp" "$dir/bin" || die "mv $dir/bin.tmp $dir/bin failed"
# The tree and its objects (hundreds of MB) are not needed again.
rm -rf "$dir/src"
echo "vm/build-old.sh: built qbd-master and qbdctl of $commit in $((SECONDS - start)) s" >&2
echo "$dir/bin"
