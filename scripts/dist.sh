#!/usr/bin/env bash
# Build the release tarball: the stripped binary, the shipped plugins with their compiled cache,
# an example config and a systemd unit. `make dist` runs it after the release build and the
# plugins; a test runs it on the debug binary it already has (PALISADE_BIN).
#
#   PALISADE_BIN  the binary to ship (default target/release/palisade)
#   DIST_OUT      where the tarball goes (default target/dist)
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${PALISADE_BIN:-target/release/palisade}
out=${DIST_OUT:-target/dist}
plugins=(model-allow depth budget pii router tool-acl approvals)

[[ -x $bin ]] || { echo "dist: no binary at $bin (cargo build --release -p palisade)" >&2; exit 1; }
for p in "${plugins[@]}"; do
  [[ -f dist/plugins/$p.wasm ]] || { echo "dist: dist/plugins/$p.wasm is missing (make plugins-rust)" >&2; exit 1; }
done

version=$("$bin" --version | awk '{print $2}')
name="palisade-$version-$(uname -m)-linux"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/$name"
mkdir -p "$root/bin" "$root/plugins" "$root/cache"

cp "$bin" "$root/bin/palisade"
strip "$root/bin/palisade"
for p in "${plugins[@]}"; do cp "dist/plugins/$p.wasm" "$root/plugins/"; done
cp deploy/palisade.toml "$root/palisade.toml"
cp deploy/palisade.service "$root/palisade.service"
cp docs/deploy.md "$root/DEPLOY.md"

# Compile every shipped plugin into the cache with the very binary shipped, so a first start
# loads them (milliseconds) instead of compiling (seconds); then check the example config.
for p in "${plugins[@]}"; do
  "$root/bin/palisade" plugin check "$root/plugins/$p.wasm" --cache-dir "$root/cache" >/dev/null
done
"$root/bin/palisade" check --config "$root/palisade.toml" >/dev/null

mkdir -p "$out"
tar -C "$stage" -czf "$out/$name.tar.gz" "$name"
echo "$out/$name.tar.gz"
