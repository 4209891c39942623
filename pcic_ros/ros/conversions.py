"""sensor_msgs <-> numpy: Image, CameraInfo and PointCloud2 with any field layout.

Imports only the message packages, not rclpy, so the conversions are usable (and tested) without a
running ROS graph.
"""

from __future__ import annotations

import array

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

__all__ = [
    "ConversionError",
    "ImageEncodingError",
    "CameraInfoError",
    "image_to_rgb",
    "rgb_to_image",
    "camera_projection",
    "pointcloud2_fields",
    "pointcloud2_to_points",
    "points_to_pointcloud2",
    "stamp_to_ns",
    "ns_to_stamp",
]


class ConversionError(ValueError):
    """A message's content does not describe what its fields claim (sizes, steps, offsets)."""


class ImageEncodingError(ConversionError):
    """An image encoding the codec cannot take (it codes 8-bit colour images)."""


class CameraInfoError(ConversionError):
    """A CameraInfo that cannot project into the image it should describe."""


#: Encodings converted to RGB: channel order of the source, then how many channels each pixel has.
_COLOUR_ENCODINGS: dict[str, tuple[tuple[int, int, int], int]] = {
    "rgb8": ((0, 1, 2), 3),
    "bgr8": ((2, 1, 0), 3),
    "rgba8": ((0, 1, 2), 4),
    "bgra8": ((2, 1, 0), 4),
}

#: PointField datatype -> numpy scalar kind and size (sensor_msgs/PointField constants).
_POINT_FIELD_TYPES: dict[int, str] = {
    PointField.INT8: "i1",
    PointField.UINT8: "u1",
    PointField.INT16: "i2",
    PointField.UINT16: "u2",
    PointField.INT32: "i4",
    PointField.UINT32: "u4",
    PointField.FLOAT32: "f4",
    PointField.FLOAT64: "f8",
}


def stamp_to_ns(stamp: Time) -> int:
    """builtin_interfaces/Time -> integer nanoseconds (exact, unlike float seconds)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(nanoseconds: int) -> Time:
    seconds, nanos = divmod(int(nanoseconds), 1_000_000_000)
    return Time(sec=seconds, nanosec=nanos)


def _rows(data: bytes | array.array, height: int, row_bytes: int, step: int, what: str) -> np.ndarray:
    """The height x row_bytes payload of a row-major buffer whose rows are step bytes apart, as a view
    of it: rclpy hands message data over as an ``array.array``, read in place rather than copied."""
    if step < row_bytes:
        raise ConversionError(f"{what}: step {step} is shorter than a row of {row_bytes} bytes")
    if len(data) < height * step - (step - row_bytes):
        raise ConversionError(f"{what}: {len(data)} bytes of data, {height} rows of step {step} need more")
    if height == 0 or row_bytes == 0:
        return np.zeros((height, row_bytes), np.uint8)
    buffer = np.frombuffer(data, np.uint8)
    # The last row need not carry its padding, so rows are cut out of the buffer one stride apart.
    return np.lib.stride_tricks.as_strided(buffer, (height, row_bytes), (step, 1))


def image_to_rgb(msg: Image) -> np.ndarray:
    """An 8-bit colour sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8) as an H x W x 3 uint8 RGB array.
    Raises ImageEncodingError for other encodings and ConversionError for inconsistent sizes."""
    encoding = msg.encoding.lower()
    if encoding not in _COLOUR_ENCODINGS:
        raise ImageEncodingError(
            f"image encoding '{msg.encoding}' is not supported; publish one of {', '.join(_COLOUR_ENCODINGS)}"
        )
    order, channels = _COLOUR_ENCODINGS[encoding]
    height, width = int(msg.height), int(msg.width)
    rows = _rows(msg.data, height, width * channels, int(msg.step), "image")
    pixels = rows.reshape(height, width, channels)
    return np.ascontiguousarray(pixels[:, :, list(order)])


def rgb_to_image(rgb: np.ndarray, header: Header) -> Image:
    """An H x W x 3 uint8 RGB array as an rgb8 sensor_msgs/Image with the given header."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected H x W x 3 RGB, got shape {rgb.shape}")
    height, width = rgb.shape[:2]
    return Image(
        header=header, height=height, width=width, encoding="rgb8", is_bigendian=0, step=3 * width, data=rgb.tobytes()
    )


def camera_projection(info: CameraInfo, width: int, height: int) -> np.ndarray:
    """The 3x4 projection P of a CameraInfo that describes a rectified image of width x height.
    Raises CameraInfoError when the sizes differ or P is unusable."""
    if (int(info.width), int(info.height)) != (width, height):
        raise CameraInfoError(f"CameraInfo is for {info.width} x {info.height}, the image is {width} x {height}")
    projection = np.asarray(info.p, dtype=np.float64).reshape(3, 4)
    if not np.all(np.isfinite(projection)) or projection[0, 0] <= 0 or projection[1, 1] <= 0:
        raise CameraInfoError("CameraInfo P has no positive focal lengths (camera not calibrated?)")
    return projection


def pointcloud2_fields(msg: PointCloud2) -> np.ndarray:
    """The points of a PointCloud2 as a flat structured array with every named field it declares, in
    native byte order, whatever their offsets, padding, types and endianness. Fields with count > 1
    become sub-arrays."""
    order = ">" if msg.is_bigendian else "<"
    names, formats, offsets = [], [], []
    for field in msg.fields:
        if field.datatype not in _POINT_FIELD_TYPES:
            raise ConversionError(f"point field '{field.name}' has unknown datatype {field.datatype}")
        kind = order + _POINT_FIELD_TYPES[field.datatype]
        names.append(field.name)
        formats.append((kind, (field.count,)) if field.count > 1 else kind)
        offsets.append(field.offset)
    point_step = int(msg.point_step)
    try:
        dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step})
    except ValueError as error:
        raise ConversionError(f"point fields do not fit a point of {point_step} bytes: {error}") from None
    height, width = int(msg.height), int(msg.width)
    rows = _rows(msg.data, height, width * point_step, int(msg.row_step), "point cloud")
    points = np.ascontiguousarray(rows).view(dtype).reshape(-1)
    return points.astype(dtype.newbyteorder("="), copy=False) if msg.is_bigendian else points


def pointcloud2_to_points(msg: PointCloud2) -> np.ndarray:
    """x, y, z of every point of a PointCloud2 as an N x 3 float64 array, non-finite points removed.
    Encoder and decoder both read their scans through this, so they project the same points."""
    points = pointcloud2_fields(msg)
    missing = [axis for axis in "xyz" if axis not in (points.dtype.names or ())]
    if missing:
        raise ConversionError(f"point cloud has no {', '.join(missing)} field")
    xyz = np.stack([points[axis].astype(np.float64) for axis in "xyz"], axis=1)
    return xyz[np.isfinite(xyz).all(axis=1)]


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
