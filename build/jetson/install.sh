#!/usr/bin/env bash
# Install edge-run on this NVIDIA Jetson (JetPack 6: Python 3.10, TensorRT 10.3) by hand.
# (`edge-flash robot --host ... --device jetson` does the same from a desktop, with releases and rollback.)
#
# Usage, on the robot, from an edge-jepa checkout or with a wheel:
#   build/jetson/install.sh [--source DIR_OR_WHEEL] [--bundle DIR] [--home DIR] [--user NAME] [--no-systemd]
# Defaults: --source = this checkout, --bundle = models/default, --home = ~/edge-jepa, --user = $USER.
# Steps: venv in HOME/venv (--system-site-packages: JetPack's tensorrt) -> pip install ->
# copy the bundle -> edge-run --self-test -> udev rule -> systemd unit (enabled, started).
set -euo pipefail

DEVICE=jetson
SYSTEM_SITE_PACKAGES=1
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SOURCE="$(cd "$HERE/../.." && pwd)"
BUNDLE="$SOURCE/models/default"
EDGE_HOME="${HOME}/edge-jepa"
EDGE_USER="${USER:-$(id -un)}"
SYSTEMD=1
PYTHON="${PYTHON:-python3}"

die() { echo "install.sh: error: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --source) SOURCE="$2"; shift 2 ;;
    --bundle) BUNDLE="$2"; shift 2 ;;
    --home) EDGE_HOME="$2"; shift 2 ;;
    --user) EDGE_USER="$2"; shift 2 ;;
    --no-systemd) SYSTEMD=0; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

[ -e "$SOURCE" ] || die "source '$SOURCE' not found (a checkout of edge-jepa or an edge_jepa-*.whl)"
[ -f "$BUNDLE/manifest.json" ] || die "bundle '$BUNDLE' has no manifest.json (pass --bundle DIR written by edge-export)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "$PYTHON is older than 3.10"
"$PYTHON" -c 'import venv' 2>/dev/null || die "the venv module is missing: sudo apt-get install python3-venv"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

echo "== venv $EDGE_HOME/venv"
mkdir -p "$EDGE_HOME/goals" "$EDGE_HOME/runs"
VENV_ARGS=()
[ "$SYSTEM_SITE_PACKAGES" = 1 ] && VENV_ARGS+=(--system-site-packages)
[ -x "$EDGE_HOME/venv/bin/python" ] || "$PYTHON" -m venv "${VENV_ARGS[@]}" "$EDGE_HOME/venv"
"$EDGE_HOME/venv/bin/python" -m pip install -q --upgrade pip
"$EDGE_HOME/venv/bin/python" -c 'import tensorrt' 2>/dev/null \
  || die "tensorrt is not importable: install JetPack's python3-libnvinfer (sudo apt-get install nvidia-tensorrt)"
EXTRA="[jetson]"

echo "== pip install edge-jepa$EXTRA from $SOURCE (compiles the firmware core: needs cmake and a C compiler)"
"$EDGE_HOME/venv/bin/python" -m pip install -q "$SOURCE$EXTRA"

echo "== bundle"
NAME="$(basename "$BUNDLE")"
rm -rf "$EDGE_HOME/bundle/$NAME.new"
mkdir -p "$EDGE_HOME/bundle"
cp -r "$BUNDLE" "$EDGE_HOME/bundle/$NAME.new"
rm -rf "$EDGE_HOME/bundle/$NAME"
mv "$EDGE_HOME/bundle/$NAME.new" "$EDGE_HOME/bundle/$NAME"

echo "== self-test (builds the inference engine on first run; minutes on a Jetson)"
cd "$EDGE_HOME"
export EDGE_JEPA_ENGINE_DIR="$EDGE_HOME/engines"
"$EDGE_HOME/venv/bin/edge-run" --self-test --device "$DEVICE" --bundle "$EDGE_HOME/bundle/$NAME" \
  || die "self-test failed (output above); nothing was installed into systemd"

render() {
  sed -e "s#@EDGE_HOME@#$EDGE_HOME#g" -e "s#@EDGE_USER@#$EDGE_USER#g" -e "s#@EDGE_DEVICE@#$DEVICE#g" \
      -e "s#@EDGE_BUNDLE@#$EDGE_HOME/bundle/$NAME#g" -e "s#@EDGE_VENV@#$EDGE_HOME/venv#g" "$1"
}
mkdir -p "$EDGE_HOME/recipes"
render "$HERE/edge-run.service" > "$EDGE_HOME/recipes/edge-run.service"
cp "$HERE/99-edge-esp32.rules" "$EDGE_HOME/recipes/"
[ -f "$EDGE_HOME/edge-run.env" ] || echo "# EDGE_RUN_ARGS=--goal $EDGE_HOME/goals/NAME.npz" > "$EDGE_HOME/edge-run.env"

if [ "$SYSTEMD" = 0 ]; then
  echo "== done (no systemd): unit and udev rule are in $EDGE_HOME/recipes/"
  exit 0
fi
echo "== udev rule -> /dev/edge-esp32"
$SUDO install -m 0644 "$HERE/99-edge-esp32.rules" /etc/udev/rules.d/99-edge-esp32.rules
$SUDO udevadm control --reload-rules && $SUDO udevadm trigger --subsystem-match=tty || true
id -nG "$EDGE_USER" | grep -qw dialout || $SUDO usermod -aG dialout "$EDGE_USER"

echo "== systemd unit edge-run.service"
$SUDO install -m 0644 "$EDGE_HOME/recipes/edge-run.service" /etc/systemd/system/edge-run.service
$SUDO systemctl daemon-reload
$SUDO systemctl enable --quiet edge-run.service
$SUDO systemctl restart edge-run.service || true
echo "installed. Set the goal in $EDGE_HOME/edge-run.env (EDGE_RUN_ARGS=--goal ...), then:"
echo "  sudo systemctl restart edge-run && journalctl -u edge-run -f"
