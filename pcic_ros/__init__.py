"""LiDAR-assisted learned image compression for ROS 2."""

import os
import sys
from pathlib import Path

# rosidl generates the message code as a second Python package also named pcic_ros: pcic_ros.msg plus
# the typesupport extension modules at the package root. A colcon install copies both halves into one
# directory, so nothing more is needed there. In a development venv this package is a pip editable
# install, which setuptools resolves with an import hook that runs after the regular sys.path search,
# so a generated pcic_ros directory anywhere on sys.path would hide this one. scripts/build_interfaces.sh
# therefore installs the generated half off sys.path, and it is joined to this package here.
_generated = os.path.join(sys.prefix, "lib", "pcic_ros_interfaces", "pcic_ros")
if os.path.isdir(_generated) and _generated not in __path__:
    __path__.append(_generated)
del _generated


def package_share() -> Path:
    """Where pcic_ros keeps launch/, config/ and msg/: ``share/pcic_ros`` of the first install on
    AMENT_PREFIX_PATH that has one (a sourced colcon workspace or ROS install), else the source tree."""
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        share = Path(prefix) / "share" / "pcic_ros"
        if prefix and (share / "package.xml").is_file():
            return share
    return Path(__file__).resolve().parents[1]
