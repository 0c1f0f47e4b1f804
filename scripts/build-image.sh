#!/usr/bin/env bash
# Builds the dedup-ledger container image from this checkout: dedupd and dedupctl linked
# statically (glibc, crt-static) for x86_64-unknown-linux-gnu, in an image FROM scratch that
# runs as uid 65532. Usage: scripts/build-image.sh [TAG]   (default tag: dedup-ledger:dev)
# DEDUP_IMAGE_PROFILE=dev builds the binaries with the dev profile the tests use (CI keeps to
# one build profile); the default is release, for images to deploy. DEDUP_IMAGE_BINARIES=DIR
# takes dedupd and dedupctl from DIR instead of building them (they must be static).
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-dedup-ledger:dev}
target=x86_64-unknown-linux-gnu
profile=${DEDUP_IMAGE_PROFILE:-release}
case "$profile" in
  release) profile_dir=release ;;
  dev) profile_dir=debug ;;
  *) echo "DEDUP_IMAGE_PROFILE must be release or dev, not $profile" >&2; exit 2 ;;
esac

if [[ -n "${DEDUP_IMAGE_BINARIES:-}" ]]; then
  # Binaries built already, statically (scripts/test.sh builds everything that way, so the
  # image holds the very dedupd the other suites ran, without a second build).
  bin=$DEDUP_IMAGE_BINARIES
  echo "taking dedupd and dedupctl from $bin"
else
  echo "building static dedupd and dedupctl ($profile, $target, crt-static) ..."
  # A target dir of its own: RUSTFLAGS differ from a plain build, which would otherwise rebuild.
  RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=target/static \
    cargo build --profile "$profile" --locked --target "$target" -p dedup-server -p dedup-client --bin dedupd --bin dedupctl
  bin=target/static/$target/$profile_dir
fi
for exe in dedupd dedupctl; do
  if ldd "$bin/$exe" 2>&1 | grep -q '=>'; then
    echo "$exe is not static:" >&2
    ldd "$bin/$exe" >&2
    exit 1
  fi
done

context=target/image-context
rm -rf "$context"
mkdir -p "$context/data"
cp "$bin/dedupd" "$bin/dedupctl" Dockerfile "$context/"
printf 'root:x:0:0:root:/:/dedupd\ndedup:x:65532:65532:dedup:/data:/dedupd\n' >"$context/passwd"
printf 'root:x:0:\ndedup:x:65532:\n' >"$context/group"

docker build -t "$tag" "$context"
echo "built image $tag: docker run --rm -p 7101:7101 $tag   (a single-node ledger)"
