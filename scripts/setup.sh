#!/usr/bin/env bash
# Creates .venv in the checkout with everything pcic_ros needs. Idempotent: when requirements.txt,
# setup.py and the message definitions are unchanged since the last run, it returns at once.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv="$root/.venv"
stamp="$venv/.pcic-setup-stamp"
want=$(cat requirements.txt setup.py package.xml CMakeLists.txt scripts/setup.sh scripts/build_interfaces.sh msg/*.msg 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip
# torch first, as a pair, so that nothing later resolves a different torch build.
pip install "$(grep '^torch==' requirements.txt)" "$(grep '^torchvision==' requirements.txt)"
pip install -r requirements.txt
pip install --no-deps --no-build-isolation -e .
if [ -x scripts/build_interfaces.sh ]; then
  bash scripts/build_interfaces.sh "$venv"
fi
echo "$want" > "$stamp"
echo "pcic_ros environment ready in $venv"
