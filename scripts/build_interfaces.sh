#!/usr/bin/env bash
# Builds the messages in msg/ with the ROS 2 wheels of a venv and installs them into that venv, so that
# `from pcic_ros.msg import CompressedFrame` works next to the editable pcic_ros package.
# Usage: bash scripts/build_interfaces.sh VENV. The ROS build wheels come from requirements.txt.
# Idempotent: a repeated run only re-checks the patches and lets cmake find nothing to rebuild.
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 VENV" >&2
  exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
venv=$(cd "$1" && pwd)
python="$venv/bin/python"
if [ ! -f "$venv/share/rosidl_default_generators/cmake/rosidl_default_generatorsConfig.cmake" ]; then
  echo "$venv lacks the ROS 2 build wheels: install requirements.txt into it first" >&2
  exit 1
fi

# The wheels' CMake export files name the Python and numpy include directories of the machine that
# built them; the message extensions compile against them, so point them at this venv's. Only files
# whose text changes are rewritten, which keeps their timestamps and so cmake's caches valid.
"$python" - "$venv/share" <<'EOF'
import pathlib
import re
import sys
import sysconfig

import numpy

python_include = sysconfig.get_paths()["include"]
numpy_include = numpy.get_include()


def local(entry: str) -> str:
    if re.search(r"/include/python3\.\d+$", entry):
        return python_include
    if re.search(r"/numpy/_?core/include$", entry):
        return numpy_include
    return entry


def rewrite(match: re.Match) -> str:
    entries = match.group(2).split(";")
    return match.group(1) + ";".join(local(entry) for entry in entries) + '"'


for path in pathlib.Path(sys.argv[1]).glob("*/cmake/*Export.cmake"):
    text = path.read_text()
    patched = re.sub(r'(INTERFACE_INCLUDE_DIRECTORIES ")([^"]*)"', rewrite, text)
    if patched != text:
        path.write_text(patched)
EOF

# The build tree lives in the venv it installs into: its cache names that venv, so another venv gets
# its own tree, and deleting the venv takes it along.
build="$venv/.pcic-interfaces-build"
# PYTHON_INSTALL_DIR keeps the generated pcic_ros package off sys.path, where it would hide the
# editable one; pcic_ros/__init__.py adds this directory to the package's __path__.
configure_args=(
  -S "$root" -B "$build"
  -DCMAKE_BUILD_TYPE=Release
  -DCMAKE_INSTALL_PREFIX="$venv"
  -DPYTHON_INSTALL_DIR=lib/pcic_ros_interfaces
  -DPCIC_ROS_INSTALL_PYTHON_SOURCES=OFF
  -DPython3_EXECUTABLE="$python"
  -DBUILD_TESTING=OFF
)
# rosidl looks up the available typesupports in the ament index through AMENT_PREFIX_PATH, both
# when configuring and when cmake reconfigures itself during a build.
export AMENT_PREFIX_PATH="$venv" CMAKE_PREFIX_PATH="$venv"
log="$build/last-run.log"
mkdir -p "$build"
run() {
  if ! "$@" >>"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "build_interfaces.sh: '$*' failed; full log in $log" >&2
    exit 1
  fi
}
: >"$log"
# Configuring takes seconds, so it only happens when the arguments or the checkout changed; a changed
# CMakeLists.txt is picked up by the build step itself.
want="${configure_args[*]}"
if [ ! -f "$build/CMakeCache.txt" ] || [ "$(cat "$build/.configure-args" 2>/dev/null)" != "$want" ]; then
  rm -rf "$build/CMakeCache.txt" "$build/CMakeFiles"
  run cmake "${configure_args[@]}"
  echo "$want" >"$build/.configure-args"
fi
run cmake --build "$build" --parallel "$(nproc)"
run cmake --install "$build"
echo "pcic_ros messages installed into $venv"

# tf2_msgs (only TFMessage, the type of /tf and /tf_static) cannot be installed from PyPI; the nodes
# need exactly that type name to exchange transforms with a real ROS 2 system, so it is built here
# the same way, unless the venv already has a tf2_msgs.
if ! "$python" -c "import tf2_msgs.msg" 2>/dev/null; then
  tf_build="$venv/.pcic-tf2-msgs-build"
  mkdir -p "$tf_build"
  log="$tf_build/last-run.log"
  : >"$log"
  if [ ! -f "$tf_build/CMakeCache.txt" ]; then
    run cmake -S "$root/interfaces/tf2_msgs" -B "$tf_build" -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_INSTALL_PREFIX="$venv" -DPython3_EXECUTABLE="$python" -DBUILD_TESTING=OFF
  fi
  run cmake --build "$tf_build" --parallel "$(nproc)"
  run cmake --install "$tf_build"
  echo "tf2_msgs (TFMessage) installed into $venv"
fi
