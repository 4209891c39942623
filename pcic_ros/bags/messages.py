"""Writing ROS messages on the bag side (rosbags' pure-Python types): KITTI frame -> Image, CameraInfo,
PointCloud2 and TFMessage, and the typestore that knows our own messages. Reading them back is
``pcic_ros.ros.messages``, the readers the nodes use.

Calibration convention (the one ``pcic_ros`` nodes read back): the camera topic carries the rectified
image, so CameraInfo is that of a rectified camera: ``P = P_rect_02`` (3x4), ``K`` its left 3x3,
``R`` the identity and no distortion. KITTI's rectifying rotation R_rect_00 therefore moves into the
extrinsic: the ``camera`` <- ``velodyne`` transform on /tf_static is ``R_rect_00 * T_velo_to_cam``, so
that ``P * T`` is the ``P_rect_02 * R_rect_00 * T_velo_to_cam`` of eq. 2. The transform travels as a
unit quaternion plus translation, which is exact to about 1e-8 (KITTI's rotation is orthonormal to
that precision): encoder and decoder must both take their calibration from the same source, the bag,
for the depth fingerprints to match.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import numpy as np
from rosbags.interfaces import Connection, MessageDefinitionFormat
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from pcic_ros import package_share
from pcic_ros.codec.projection import Calibration
from pcic_ros.ros.messages import matrix_to_quaternion

__all__ = [
    "IMAGE_TYPE",
    "CAMERA_INFO_TYPE",
    "POINT_CLOUD_TYPE",
    "TF_MESSAGE_TYPE",
    "COMPRESSED_FRAME_TYPE",
    "CODEC_STATISTICS_TYPE",
    "CAMERA_FRAME",
    "LIDAR_FRAME",
    "bag_typestore",
    "reader_typestore",
    "stamp",
    "image_message",
    "camera_info_message",
    "point_cloud_message",
    "camera_from_lidar",
    "tf_static_message",
]

IMAGE_TYPE = "sensor_msgs/msg/Image"
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
POINT_CLOUD_TYPE = "sensor_msgs/msg/PointCloud2"
TF_MESSAGE_TYPE = "tf2_msgs/msg/TFMessage"
COMPRESSED_FRAME_TYPE = "pcic_ros/msg/CompressedFrame"
CODEC_STATISTICS_TYPE = "pcic_ros/msg/CodecStatistics"

CAMERA_FRAME = "camera"
LIDAR_FRAME = "velodyne"

#: Fields of the scans we write: KITTI's x, y, z, reflectance as little-endian float32.
_SCAN_FIELDS = ("x", "y", "z", "intensity")


def _message_definition_dirs() -> list[Path]:
    # A source checkout keeps msg/ next to the package and a colcon install under its share/ (both
    # package_share); scripts/build_interfaces.sh puts them under the venv's share/.
    return [package_share() / "msg", Path(sys.prefix) / "share" / "pcic_ros" / "msg"]


_OWN_TYPES = (COMPRESSED_FRAME_TYPE, CODEC_STATISTICS_TYPE)


def _own_definition(msgtype: str) -> str:
    name = msgtype.rsplit("/", 1)[1]
    for folder in _message_definition_dirs():
        definition = folder / f"{name}.msg"
        if definition.is_file():
            return definition.read_text()
    raise FileNotFoundError(f"{name}.msg not found in {', '.join(map(str, _message_definition_dirs()))}")


@cache
def bag_typestore() -> Typestore:
    """ROS 2 Kilted's types plus pcic_ros/msg/CompressedFrame and CodecStatistics from msg/*.msg."""
    typestore = get_typestore(Stores.ROS2_KILTED)
    for msgtype in _OWN_TYPES:
        typestore.register(get_types_from_msg(_own_definition(msgtype), msgtype))
    return typestore


def reader_typestore(connections: Iterable[Connection]) -> Typestore:
    """The typestore to read a bag's messages with: pcic_ros's own messages as the bag recorded them
    (the definitions its connections carry), so that a recording made with an older CompressedFrame
    reads with that one; today's msg/ files where the bag holds no definition."""
    recorded = {
        c.msgtype: c.msgdef.data
        for c in connections
        if c.msgtype in _OWN_TYPES and c.msgdef.format == MessageDefinitionFormat.MSG and c.msgdef.data
    }
    if not recorded:
        return bag_typestore()
    typestore = get_typestore(Stores.ROS2_KILTED)
    for msgtype in _OWN_TYPES:
        typestore.register(get_types_from_msg(recorded.get(msgtype) or _own_definition(msgtype), msgtype))
    return typestore


def stamp(nanoseconds: int) -> object:
    """builtin_interfaces/msg/Time of a time in nanoseconds."""
    time_type = bag_typestore().types["builtin_interfaces/msg/Time"]
    return time_type(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


def _header(nanoseconds: int, frame_id: str) -> object:
    return bag_typestore().types["std_msgs/msg/Header"](stamp=stamp(nanoseconds), frame_id=frame_id)


def image_message(image: np.ndarray, nanoseconds: int, frame_id: str = CAMERA_FRAME) -> object:
    """sensor_msgs/msg/Image, rgb8, of an H x W x 3 uint8 image."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be H x W x 3, got {image.shape}")
    height, width = image.shape[:2]
    return bag_typestore().types[IMAGE_TYPE](
        header=_header(nanoseconds, frame_id),
        height=height,
        width=width,
        encoding="rgb8",
        is_bigendian=0,
        step=3 * width,
        data=image.reshape(-1),
    )


def camera_info_message(
    calibration: Calibration, height: int, width: int, nanoseconds: int, frame_id: str = CAMERA_FRAME
) -> object:
    """CameraInfo of the rectified camera: P = the calibration's projection, R = I, no distortion."""
    types = bag_typestore().types
    projection = calibration.projection
    roi = types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return types[CAMERA_INFO_TYPE](
        header=_header(nanoseconds, frame_id),
        height=height,
        width=width,
        distortion_model="plumb_bob",
        d=np.zeros(5),
        k=projection[:, :3].reshape(-1).copy(),
        r=np.eye(3).reshape(-1),
        p=projection.reshape(-1).copy(),
        binning_x=0,
        binning_y=0,
        roi=roi,
    )


def point_cloud_message(scan: np.ndarray, nanoseconds: int, frame_id: str = LIDAR_FRAME) -> object:
    """sensor_msgs/msg/PointCloud2 of an N x 4 scan: x, y, z, intensity as float32, one row."""
    scan = np.asarray(scan)
    if scan.ndim != 2 or scan.shape[1] != 4:
        raise ValueError(f"scan must be N x 4 (x, y, z, reflectance), got {scan.shape}")
    types = bag_typestore().types
    point_field = types["sensor_msgs/msg/PointField"]
    fields = [
        point_field(name=name, offset=4 * index, datatype=point_field.FLOAT32, count=1)
        for index, name in enumerate(_SCAN_FIELDS)
    ]
    data = np.ascontiguousarray(scan, dtype="<f4").view(np.uint8).reshape(-1)
    return types[POINT_CLOUD_TYPE](
        header=_header(nanoseconds, frame_id),
        height=1,
        width=scan.shape[0],
        fields=fields,
        is_bigendian=False,
        point_step=16,
        row_step=16 * scan.shape[0],
        data=data,
        is_dense=bool(np.isfinite(scan).all()),
    )


def camera_from_lidar(calibration: Calibration) -> np.ndarray:
    """The 4x4 extrinsic of /tf_static: R_rect * T_cam_lidar (see the module docstring)."""
    return calibration.rectification @ calibration.lidar_to_camera


def tf_static_message(
    camera_from_lidar_matrix: np.ndarray,
    nanoseconds: int,
    camera_frame: str = CAMERA_FRAME,
    lidar_frame: str = LIDAR_FRAME,
) -> object:
    """tf2_msgs/msg/TFMessage with the one transform camera <- velodyne (pose of the LiDAR in the camera)."""
    types = bag_typestore().types
    matrix = np.asarray(camera_from_lidar_matrix, dtype=np.float64)
    qx, qy, qz, qw = matrix_to_quaternion(matrix[:3, :3])
    transform = types["geometry_msgs/msg/Transform"](
        translation=types["geometry_msgs/msg/Vector3"](x=matrix[0, 3], y=matrix[1, 3], z=matrix[2, 3]),
        rotation=types["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw),
    )
    stamped = types["geometry_msgs/msg/TransformStamped"](
        header=_header(nanoseconds, camera_frame), child_frame_id=lidar_frame, transform=transform
    )
    return types[TF_MESSAGE_TYPE](transforms=[stamped])
