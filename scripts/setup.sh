#!/usr/bin/env bash
# Installs everything meshauth's demo and test suite need on a fresh Debian machine (as root):
# the Debian packages in scripts/debian-packages.txt, the npm packages from the lockfile, the
# compiled TypeScript and the compiled eBPF object. Idempotent and quick when all is in place.
set -euo pipefail
cd "$(dirname "$0")/.."

need_node="20.19.0"
if ! node -e "const [a,b]=process.versions.node.split('.').map(Number);const [x,y]='$need_node'.split('.').map(Number);process.exit(a>x||(a===x&&b>=y)?0:1)" 2>/dev/null; then
  echo "setup: meshauth needs Node.js >= $need_node (found: $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi

mapfile -t packages < <(sed -e 's/#.*//' -e '/^\s*$/d' scripts/debian-packages.txt | awk '{print $1}')
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # INITRD=No: the guest kernel package needs no initramfs (run-in-guest boots it with its own).
  INITRD=No apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm packages"
  npm ci --no-audit --no-fund --loglevel=error
else
  npm run --silent build
fi
# grep reads all of npm's output: with -q it would stop early and npm would log a broken pipe.
if npm run | grep 'build:bpf' >/dev/null; then npm run --silent build:bpf; fi
echo "setup: ready"
