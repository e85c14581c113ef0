#!/usr/bin/env bash
# Proves, without a GPU, that the GPU machine can build ramstream from only what travels to it:
# runs the build phase of scripts/gpu_check.sh (`--build-only`) inside a bare Debian 12 chroot
# that has what that machine has (CMake, ninja, g++, Python with pip's torch 2.11 +cu130, the
# CUDA 13 toolkit) and nothing else: no pkg-config, no -dev packages, no network during the build.
#
#   bash scripts/gpu_stage_deps.sh                 # first: stage .gpu-deps/ (and the model parts)
#   bash scripts/gpu_bare_build_check.sh           # build in the chroot (keeps its build-gpu/)
#   bash scripts/gpu_bare_build_check.sh --clean   # from scratch: no build-gpu/ left from before
#   bash scripts/gpu_bare_build_check.sh --setup-only   # only make the chroot and its venv
#
# Runs as root on the Debian 12 development machine (it uses debootstrap, chroot and bind mounts).
# The chroot is made once and cached under ${RAMSTREAM_BARE_DIR:-/var/tmp/ramstream-bare}
# (outside the repository): `debootstrap --variant=minbase` with only cmake, ninja-build, g++,
# python3, python3-venv and python3-pip, then a venv at /opt/torch/.venv (where the GPU machine
# has its torch) with `pip install torch==2.11.0` (the CUDA 13 build on PyPI; a local copy of the
# torch wheel in ${TORCH_WHEEL_DIR:-/tmp/whl} is used when present, pip's cache is kept in
# $RAMSTREAM_BARE_DIR/pip-cache). Each run then copies the working tree as git would send it
# (tracked plus untracked-not-ignored files) and .gpu-deps/ into the chroot's /work/ramstream,
# bind-mounts this machine's /usr/local/cuda read-only at the same place, and runs
#   OUT=/work/gpu-out bash scripts/gpu_check.sh --build-only
# there with the venv's python3 first in PATH. CUDA sources compile for sm_90; nothing runs.
# Logs: $RAMSTREAM_BARE_DIR/last-run/ (summary.txt, build.log, run.log). Exit status: the build's.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
REPO=$PWD

BARE=${RAMSTREAM_BARE_DIR:-/var/tmp/ramstream-bare}
ROOTFS=$BARE/rootfs
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# What the GPU machine has for building (DESIGN.md section 9); debootstrap's minbase adds the rest.
PACKAGES=cmake,ninja-build,g++,python3,python3-venv,python3-pip
TORCH_SPEC=torch==2.11.0
TORCH_WHEEL_DIR=${TORCH_WHEEL_DIR:-/tmp/whl}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}

mode=build
for arg in "$@"; do
  case "$arg" in
    --clean) clean=1 ;;
    --setup-only) mode=setup ;;
    -h | --help)
      sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "gpu_bare_build_check: unknown argument '$arg' (see --help)" >&2
      exit 2
      ;;
  esac
done
clean=${clean:-0}

log() { echo "gpu_bare_build_check: $*" >&2; }
die() {
  log "$*"
  exit 1
}

[[ ${EUID:-$(id -u)} -eq 0 ]] || die "must run as root (debootstrap, chroot, mount)"

# Mounts made by this run, unmounted in reverse order on exit.
mounts=()
cleanup() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
    umount "${mounts[i]}" 2> /dev/null || umount -l "${mounts[i]}" 2> /dev/null ||
      log "could not unmount ${mounts[i]}"
  done
  mounts=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# bind SRC DST [ro]: bind-mounts SRC at DST (created if needed), read-only with "ro".
bind() {
  local src=$1 dst=$2 ro=${3:-}
  mkdir -p "$dst"
  mount --bind "$src" "$dst" || die "mount --bind $src $dst failed"
  mounts+=("$dst")
  if [[ "$ro" == ro ]]; then
    mount -o remount,ro,bind "$dst" || die "remounting $dst read-only failed"
  fi
}

mount_system() {
  mkdir -p "$ROOTFS/proc"
  mount -t proc proc "$ROOTFS/proc" || die "mounting /proc in the chroot failed"
  mounts+=("$ROOTFS/proc")
  bind /dev "$ROOTFS/dev"
}

# in_chroot CMD...: runs CMD in the chroot with a clean environment (nothing of this machine's
# PATH, PIP_*, CPATH or PKG_CONFIG_PATH leaks in).
in_chroot() {
  chroot "$ROOTFS" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH=/opt/torch/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    "$@"
}

make_rootfs() {
  if [[ -f "$ROOTFS/.ramstream-rootfs-ok" ]]; then
    return 0
  fi
  if ! command -v debootstrap > /dev/null; then
    log "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap || die "apt-get install debootstrap failed"
  fi
  log "debootstrap $SUITE (minbase + $PACKAGES) into $ROOTFS"
  rm -rf "$ROOTFS"
  mkdir -p "$BARE"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" \
    > "$BARE/debootstrap.log" 2>&1 || die "debootstrap failed (see $BARE/debootstrap.log)"
  touch "$ROOTFS/.ramstream-rootfs-ok"
}

make_venv() {
  if [[ -f "$ROOTFS/opt/torch/.venv/.ramstream-torch-ok" ]]; then
    return 0
  fi
  log "creating /opt/torch/.venv in the chroot with pip's $TORCH_SPEC"
  # pip needs DNS and this machine's CA certificates (its HTTPS may go through a proxy with a
  # CA of its own) to reach PyPI; the build itself needs no network.
  cp -L /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
  cp -L "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$ROOTFS/root/host-ca-certificates.crt"
  mkdir -p "$BARE/pip-cache"
  bind "$BARE/pip-cache" "$ROOTFS/root/.cache/pip"
  local links=()
  if compgen -G "$TORCH_WHEEL_DIR/torch-2.11.0-*.whl" > /dev/null; then
    bind "$TORCH_WHEEL_DIR" "$ROOTFS/wheels" ro
    links=(--find-links /wheels)
  fi
  rm -rf "$ROOTFS/opt/torch/.venv"
  in_chroot python3 -m venv /opt/torch/.venv || die "python3 -m venv failed in the chroot"
  in_chroot /opt/torch/.venv/bin/pip install --disable-pip-version-check --progress-bar off \
    --cert /root/host-ca-certificates.crt "${links[@]}" "$TORCH_SPEC" > "$BARE/pip.log" 2>&1 ||
    die "pip install $TORCH_SPEC failed in the chroot (see $BARE/pip.log)"
  in_chroot python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' ||
    die "import torch failed in the chroot"
  touch "$ROOTFS/opt/torch/.venv/.ramstream-torch-ok"
  cleanup
}

# The chroot must be as bare as the GPU machine: no pkg-config and no headers or link-time files
# of the libraries that .gpu-deps/ provides, or the check would prove nothing.
check_bare() {
  local found=()
  [[ -e "$ROOTFS/usr/bin/pkg-config" || -e "$ROOTFS/usr/bin/pkgconf" ]] && found+=(pkg-config)
  local f
  for f in usr/include/hwloc.h usr/include/numa.h usr/include/tbb usr/include/oneapi \
    usr/include/yaml-cpp usr/include/pcre2.h usr/include/utf8proc.h usr/include/nlohmann \
    usr/include/CLI usr/include/gtest usr/include/unicode usr/src/googletest; do
    [[ -e "$ROOTFS/$f" ]] && found+=("/$f")
  done
  # Runtime libraries that minbase or cmake bring (libpcre2-8.so.0 for grep, libudev.so.1,
  # libicuuc.so.72 for libxml2) are fine: no build can link them without the -dev symlink.
  for f in libhwloc libnuma libtbb libtbbmalloc libyaml-cpp libpcre2-8 libutf8proc libudev \
    libicuuc libgtest; do
    [[ -e "$ROOTFS/usr/lib/x86_64-linux-gnu/$f.so" || -e "$ROOTFS/usr/lib/x86_64-linux-gnu/$f.a" ]] &&
      found+=("$f.so")
  done
  ((${#found[@]} == 0)) || die "the chroot is not bare, it has: ${found[*]} (rm -rf $ROOTFS)"
}

# The working tree as the device tool sends it: tracked and untracked-not-ignored files that
# exist (symbolic links as links), then the carried .gpu-deps/. build-gpu/ and the unpacked
# .gpu-deps/prefix/ of an earlier run stay, as ignored outputs do on a warm GPU machine.
copy_tree() {
  local dest=$ROOTFS/work/ramstream
  if ((clean)); then
    rm -rf "$dest"
  elif [[ -d "$dest" ]]; then
    find "$dest" -mindepth 1 -maxdepth 1 ! -name build-gpu ! -name .gpu-deps -exec rm -rf {} +
  fi
  mkdir -p "$dest"
  (
    cd "$REPO" &&
      git ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' f; do
        [[ -e "$f" || -L "$f" ]] && printf '%s\0' "$f"
      done |
      tar --null -T - -cf -
  ) | tar -xf - -C "$dest" || die "copying the working tree into the chroot failed"
  # The carried path replaces what was there (the prefix is unpacked again from the archive).
  rm -rf "$dest/.gpu-deps"
  cp -a "$REPO/.gpu-deps" "$dest/.gpu-deps"
}

make_rootfs
make_venv
check_bare
if [[ "$mode" == setup ]]; then
  log "chroot ready: $ROOTFS"
  exit 0
fi
[[ -d "$REPO/.gpu-deps" ]] || die ".gpu-deps/ missing: run scripts/gpu_stage_deps.sh first"
[[ -x "$CUDA_HOME/bin/nvcc" ]] || die "$CUDA_HOME/bin/nvcc not found (set CUDA_HOME)"

copy_tree
mount_system
bind "$(realpath "$CUDA_HOME")" "$ROOTFS/usr/local/cuda" ro
rm -rf "$ROOTFS/work/gpu-out"

log "building in the chroot ($(nproc) cores): scripts/gpu_check.sh --build-only"
started=$(date +%s)
in_chroot bash -c 'cd /work/ramstream && OUT=/work/gpu-out bash scripts/gpu_check.sh --build-only' \
  > "$BARE/run.log" 2>&1
rc=$?
wall=$(($(date +%s) - started))

rm -rf "$BARE/last-run"
mkdir -p "$BARE/last-run"
cp "$ROOTFS"/work/gpu-out/* "$BARE/last-run/" 2> /dev/null
mv "$BARE/run.log" "$BARE/last-run/run.log"
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
{
  echo "bare chroot build check: $(date -u '+%Y-%m-%d %H:%M UTC'), $cpu, $(nproc) cores"
  echo "exit status $rc, wall time ${wall} s ($((wall / 60)) min $((wall % 60)) s)"
} | tee "$BARE/last-run/result.txt"
if [[ -f "$BARE/last-run/summary.txt" ]]; then
  cat "$BARE/last-run/summary.txt"
else
  tail -n 30 "$BARE/last-run/run.log"
fi
log "logs in $BARE/last-run/"
exit "$rc"
