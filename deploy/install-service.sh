#!/bin/sh
# Install duplexd as a systemd service: a wheel of this checkout into its own venv with the
# runtime dependencies only, the units, the configuration (kept if present) and the docs the
# units' Documentation= points at.
#
#   sudo make install-service            # = deploy/install-service.sh "" /opt/duplexd
#   make install-service DESTDIR=/tmp/r  # into a staging root (packaging, tests)
#
# TORCH: what to install for torch (default torch==2.13.0, the CPU build: a plain "torch" would
# pull a multi-GB CUDA build). On a GPU host: TORCH="torch==<version>" from the CUDA index your
# machine uses (PIP_EXTRA_INDEX_URL), or TORCH=system to use the system's torch (the venv then
# sees the system's site-packages).
set -eu
root=${1:-}
prefix=${2:-/opt/duplexd}
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
torch=${TORCH:-torch==2.13.0}
venv="$root$prefix/venv"

say() { printf 'install-service: %s\n' "$*"; }

say "building the wheel"
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
"$python" -m pip wheel -q --no-deps -w "$wheels" "$here" >/dev/null

say "creating $venv"
if [ "$torch" = system ]; then
    "$python" -m venv --system-site-packages "$venv"
else
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip
if [ "$torch" != system ]; then
    "$venv/bin/python" -m pip install -q "$torch"
fi
"$venv/bin/python" -m pip install -q "$wheels"/duplexd-*.whl

say "installing the units, the configuration and the docs"
install -d "$root/etc/systemd/system" "$root/etc/duplexd" "$root/usr/share/doc/duplexd"
for unit in duplexd.service duplexd@.service duplexd-worker@.service duplexd-workers.socket \
    duplexd-workers-ready.socket duplexd-model.service; do
    sed "s|/opt/duplexd/venv|$prefix/venv|g" "$here/deploy/$unit" >"$root/etc/systemd/system/$unit"
    chmod 644 "$root/etc/systemd/system/$unit"
done
if [ ! -e "$root/etc/duplexd/duplexd.toml" ]; then
    install -m 644 "$here/deploy/duplexd.example.toml" "$root/etc/duplexd/duplexd.toml"
fi
install -m 644 "$here/README.md" "$here/SECURITY.md" "$root/usr/share/doc/duplexd/"
say "done: systemctl daemon-reload && systemctl enable --now duplexd"
