"""numpy -> rclpy messages: the Image, PointCloud2 and Time the nodes and the test bench publish.

Reading messages back into numpy is ``pcic_ros.ros.messages``, shared with the bag tools. Imports only
the message packages, not rclpy, so the conversions are usable (and tested) without a running ROS graph.
"""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image, PointCloud2, PointField
from std_msgs.msg import Header

__all__ = ["rgb_to_image", "points_to_pointcloud2", "ns_to_stamp"]


def ns_to_stamp(nanoseconds: int) -> Time:
    seconds, nanos = divmod(int(nanoseconds), 1_000_000_000)
    return Time(sec=seconds, nanosec=nanos)


def rgb_to_image(rgb: np.ndarray, header: Header) -> Image:
    """An H x W x 3 uint8 RGB array as an rgb8 sensor_msgs/Image with the given header."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected H x W x 3 RGB, got shape {rgb.shape}")
    height, width = rgb.shape[:2]
    return Image(
        header=header, height=height, width=width, encoding="rgb8", is_bigendian=0, step=3 * width, data=rgb.tobytes()
    )


def points_to_pointcloud2(points: np.ndarray, header: Header) -> PointCloud2:
    """An N x 3 (x, y, z) or N x 4 (x, y, z, intensity) array as a dense float32 PointCloud2."""
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] not in (3, 4):
        raise ValueError(f"expected N x 3 or N x 4 points, got shape {points.shape}")
    names = ["x", "y", "z", "intensity"][: points.shape[1]]
    fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, n in enumerate(names)]
    data = np.ascontiguousarray(points, dtype="<f4")
    return PointCloud2(
        header=header,
        height=1,
        width=points.shape[0],
        fields=fields,
        is_bigendian=False,
        point_step=4 * len(names),
        row_step=4 * len(names) * points.shape[0],
        data=data.tobytes(),
        is_dense=bool(np.isfinite(data).all()),
    )
