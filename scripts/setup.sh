#!/usr/bin/env bash
# Creates .venv with pinned dependencies, builds kp_perception_msgs into it and
# installs this package editable. Idempotent: each step re-runs only when its
# inputs changed (stamps in .venv/.kp-stamps/), so a warm run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
STAMPS=$VENV/.kp-stamps
PY=${PYTHON:-python3}

say() { printf '[setup] %s\n' "$*"; }
# pip warns once per package about this machine's optional local index folders; keep real output only.
quiet_pip() { pip --quiet "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; }
digest() { cat "$@" | sha256sum | cut -c1-16; }
fresh() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
stamp() { mkdir -p "$STAMPS"; echo "$2" > "$STAMPS/$1"; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment in .venv"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

req=$(digest requirements.txt)
if fresh requirements "$req"; then
  say "dependencies up to date"
else
  say "installing pinned dependencies (torch CPU, ROS 2 wheels, onnxruntime, ...): about 2-4 minutes"
  quiet_pip install --upgrade pip
  quiet_pip install -r requirements.txt
  stamp requirements "$req"
fi

msgs=$(digest kp_perception_msgs/CMakeLists.txt kp_perception_msgs/package.xml kp_perception_msgs/msg/*.msg)
if fresh msgs "$msgs-$req"; then
  say "kp_perception_msgs up to date"
else
  say "building kp_perception_msgs into .venv"
  build=$VENV/.kp-build/kp_perception_msgs
  rm -rf "$build"; mkdir -p "$build"
  (
    cd "$build"
    export CMAKE_PREFIX_PATH=$VENV AMENT_PREFIX_PATH=$VENV
    cmake "$ROOT/kp_perception_msgs" -DCMAKE_INSTALL_PREFIX="$VENV" \
      -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF > cmake.log 2>&1 \
      || { cat cmake.log; exit 1; }
    make -j2 install > make.log 2>&1 || { tail -50 make.log; exit 1; }
  )
  python -c "from kp_perception_msgs.msg import KeypointPyramid" \
    || { say "kp_perception_msgs built but does not import"; exit 1; }
  stamp msgs "$msgs-$req"
fi

pkg=$(digest setup.py setup.cfg package.xml)
if fresh package "$pkg-$req"; then
  say "kp_perception (editable) up to date"
else
  say "installing kp_perception editable"
  quiet_pip install --no-deps --no-build-isolation -e .
  stamp package "$pkg-$req"
fi
say "ready: . .venv/bin/activate"
