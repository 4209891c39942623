"""LiDAR-assisted learned image compression for ROS 2."""

import os
import sys

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
