#!/usr/bin/env bash
# Installs every Debian 12 package that building and testing ramstream needs.
#   bash scripts/setup.sh
# Idempotent: when every package is already installed it skips apt entirely (no `apt-get update`),
# so repeated runs take well under a second. Runs as root, or through sudo otherwise.
# After installing it checks that the generic libblas.so.3 (which Debian's libtorch links) resolves
# to OpenBLAS: with only the reference BLAS, CPU matmuls are ~40x slower (DESIGN.md section 7).
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential cmake ninja-build ccache git pkg-config
  # python (fixture scripts, tooling)
  python3 python3-venv python3-pip
  # libtorch (CPU, 1.13) and a fast BLAS behind its generic libblas.so.3
  libtorch-dev libopenblas0-pthread
  # oneDNN headers (the library is libtorch's own) for bf16 -> fp32 CPU GEMMs
  libdnnl-dev
  # host memory and threading
  libhwloc-dev libnuma-dev libtbb-dev
  # collectives: Gloo headers and library for c10d's ProcessGroupGloo (dist/)
  libgloo-dev
  # logging, config, CLI, tokenizer regexes and NFC
  libspdlog-dev libfmt-dev libyaml-cpp-dev nlohmann-json3-dev libcli11-dev libpcre2-dev libutf8proc-dev
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev
  # clang 14: libFuzzer (clang-rt) and formatting
  clang-14 libclang-rt-14-dev clang-format-14
)

if [[ ${EUID:-$(id -u)} -eq 0 ]]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  echo "setup.sh: not root and sudo is not available; run as root" >&2
  exit 1
fi

# A package counts as installed only when dpkg says "install ok installed".
missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "setup.sh: all ${#PACKAGES[@]} packages already installed"
else
  echo "setup.sh: installing ${#missing[@]} missing package(s): ${missing[*]}"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y "${PACKAGES[@]}"
fi

# libtorch-dev (Debian) links the generic libblas.so.3; make sure that is OpenBLAS.
check_alternative() {
  local name=$1 want=$2 value
  value=$(update-alternatives --query "$name" 2>/dev/null | sed -n 's/^Value: //p' || true)
  if [[ "$value" == *"$want"* ]]; then
    echo "setup.sh: $name -> $value"
  else
    echo "setup.sh: WARNING: $name resolves to '${value:-<unset>}', not $want;" \
      "CPU matmuls in libtorch will be ~40x slower." >&2
    echo "setup.sh: fix with: ${SUDO[*]:+${SUDO[*]} }update-alternatives --set $name" \
      "/usr/lib/x86_64-linux-gnu/openblas-pthread/${name%%-x86_64-linux-gnu}" >&2
  fi
}
arch=$(dpkg --print-architecture)
if [[ "$arch" == "amd64" ]]; then
  check_alternative libblas.so.3-x86_64-linux-gnu openblas
else
  echo "setup.sh: note: architecture $arch; BLAS alternative check skipped" >&2
fi
