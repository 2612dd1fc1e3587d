#!/usr/bin/env bash
# Install everything microvm and its tests need on Debian 12 (run as root):
# the host tools from Debian, then the package into ./.venv.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3-venv
  qemu-system-x86 qemu-utils     # the hypervisor (qemu-system-common brings virtiofsd)
  qemu-system-arm                # aarch64 guests under CPU emulation
  busybox-static                 # the guest's userland and the initrd
  erofs-utils squashfs-tools     # read-only root images
  e2fsprogs                      # volumes (mkfs.ext4)
  kmod                           # depmod for the guest kernel's modules
  lz4                            # uncompress the kernel for a faster (PVH) boot
  cpio                           # tests read initrds back
  iproute2 dnsmasq-base nftables # host networking
  systemd-container              # tests run real systemd in a container
  mmdebstrap zstd                # ... on a Debian rootfs built once and cached as .tar.zst
  git                            # git+file:// sources of installed VMs
  shellcheck                     # generated scripts are checked
  mmdebstrap debian-archive-keyring  # debian guests (guest.base = "debian")
  openssh-client curl            # tests reach debian guests over SSH and HTTP
  chromium chromium-driver       # tests drive `microvm web`'s page in a headless browser
  pacemaker-cli-utils            # cluster: cibadmin and crm_verify check the resources offline (CIB_file=)
)
# xterm.js for `microvm web`'s consoles comes from the npm registry: Debian's npm, unless one is there already
command -v npm >/dev/null || APT_PACKAGES+=(npm)
# `--bench` (or EXTRAS=bench): what the benchmark compares against, and matplotlib for its plots
if [ "${1:-}" = "--bench" ]; then
  EXTRAS=${EXTRAS:+$EXTRAS,}bench
fi
if [[ ",${EXTRAS:-}," == *,bench,* ]]; then
  APT_PACKAGES+=(libvirt-daemon-system virtinst)  # bench/libvirt.py uses a running libvirtd or runs its own
fi

# One line per stage; the tools' own output goes to a log, whose last lines are shown if a stage fails.
LOG=$(mktemp -t microvm-setup.XXXXXX)
trap 'rm -f "$LOG"' EXIT
stage() {
  local what=$1
  shift
  echo "setup: $what" >&2
  if ! "$@" >"$LOG" 2>&1; then
    echo "setup: $what failed:" >&2
    tail -n 20 "$LOG" >&2
    exit 1
  fi
}

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  # The guest kernel comes from the apt lists: keep them fresh once a day.
  lists_age=$(( $(date +%s) - $(stat -c %Y /var/lib/apt/lists 2>/dev/null || echo 0) ))
  if [ "${#missing[@]}" -gt 0 ] || [ "$lists_age" -gt 86400 ] || ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
    stage "refreshing the Debian package lists" apt-get update -qq
  fi
  if [ "${#missing[@]}" -gt 0 ]; then
    stage "installing ${missing[*]} (Debian)" \
      env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
else
  echo "setup: not root or no apt-get; install these yourself: ${APT_PACKAGES[*]}" >&2
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  stage "creating .venv" "$PYTHON" -m venv .venv
fi
pip_install() {
  .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e ".[test,web${EXTRAS:+,$EXTRAS}]"
}
stage "installing microvm into .venv (pip)" pip_install
# The page's libraries, served as they are (no build step): the versions package-lock.json pins.
npm_install() {
  (cd src/microvm/web/static && npm ci --no-audit --no-fund --loglevel=error)
}
stage "installing the web page's libraries (npm)" npm_install
