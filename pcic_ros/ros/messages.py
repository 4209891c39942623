"""Reading ROS 2 messages into numpy, for rclpy's message objects and rosbags' alike.

The nodes get their messages from rclpy, ``pcic bag`` from rosbags; both have the same field names,
so one reader serves both, and the encoder, the decoder and ``pcic bag decode`` read every scan,
image, stamp and transform with the same code (the depth map, and so the fingerprint, must come out
bit-identical at both ends). Nothing here imports rclpy, rosbags or a message package: the readers
only read attributes. The rigid-transform arithmetic is here too, for the TF buffer and for the
/tf_static messages ``pcic bag`` writes.
"""

from __future__ import annotations

import array
from collections.abc import Sequence

import cv2
import numpy as np

from pcic_ros.codec.projection import Calibration, CalibrationError
from pcic_ros.errors import PcicError

__all__ = [
    "ConversionError",
    "ImageEncodingError",
    "CameraInfoError",
    "stamp_to_ns",
    "image_to_rgb",
    "camera_projection",
    "pointcloud2_fields",
    "pointcloud2_to_points",
    "quaternion_to_matrix",
    "matrix_to_quaternion",
    "transform_to_matrix",
    "calibration_fields",
    "carried_calibration",
]


class ConversionError(PcicError, ValueError):
    """A message's content does not describe what its fields claim (sizes, steps, offsets)."""


class ImageEncodingError(ConversionError):
    """An image encoding the codec cannot take (it codes 8-bit colour images)."""


class CameraInfoError(ConversionError):
    """A CameraInfo that cannot project into the image it should describe."""


#: The sensor_msgs/Image encodings the encoder takes, as cv_bridge converts them to rgb8: bytes per
#: pixel, the sample type, and the OpenCV conversion to RGB (None: already RGB). OpenCV names a Bayer
#: pattern after its second row, so ROS's bayer_rggb8 is OpenCV's BayerBG (as in cv_bridge).
_IMAGE_ENCODINGS: dict[str, tuple[int, str, int | None]] = {
    "rgb8": (3, "u1", None),
    "bgr8": (3, "u1", cv2.COLOR_BGR2RGB),
    "rgba8": (4, "u1", cv2.COLOR_RGBA2RGB),
    "bgra8": (4, "u1", cv2.COLOR_BGRA2RGB),
    "mono8": (1, "u1", cv2.COLOR_GRAY2RGB),
    "mono16": (2, "u2", cv2.COLOR_GRAY2RGB),
    "bayer_rggb8": (1, "u1", cv2.COLOR_BayerBG2RGB),
    "bayer_bggr8": (1, "u1", cv2.COLOR_BayerRG2RGB),
    "bayer_gbrg8": (1, "u1", cv2.COLOR_BayerGR2RGB),
    "bayer_grbg8": (1, "u1", cv2.COLOR_BayerGB2RGB),
    "yuv422": (2, "u1", cv2.COLOR_YUV2RGB_UYVY),
    "uyvy": (2, "u1", cv2.COLOR_YUV2RGB_UYVY),
    "yuv422_yuy2": (2, "u1", cv2.COLOR_YUV2RGB_YUY2),
    "yuyv": (2, "u1", cv2.COLOR_YUV2RGB_YUY2),
}

#: sensor_msgs/PointField datatype constants (INT8 = 1 ... FLOAT64 = 8) -> numpy scalar kind and size.
_POINT_FIELD_TYPES: dict[int, str] = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}


def stamp_to_ns(stamp: object) -> int:
    """builtin_interfaces/Time -> integer nanoseconds (exact, unlike float seconds)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _rows(data: bytes | array.array | np.ndarray, height: int, row_bytes: int, step: int, what: str) -> np.ndarray:
    """The height x row_bytes payload of a row-major buffer whose rows are step bytes apart, as a view
    of it: rclpy hands message data over as an ``array.array``, rosbags as a numpy array, both read in
    place rather than copied."""
    if step < row_bytes:
        raise ConversionError(f"{what}: step {step} is shorter than a row of {row_bytes} bytes")
    if len(data) < height * step - (step - row_bytes):
        raise ConversionError(f"{what}: {len(data)} bytes of data, {height} rows of step {step} need more")
    if height == 0 or row_bytes == 0:
        return np.zeros((height, row_bytes), np.uint8)
    buffer = np.frombuffer(data, np.uint8)
    # The last row need not carry its padding, so rows are cut out of the buffer one stride apart.
    return np.lib.stride_tricks.as_strided(buffer, (height, row_bytes), (step, 1))


def image_to_rgb(msg: object) -> np.ndarray:
    """A sensor_msgs/Image as an H x W x 3 uint8 RGB array, converted as cv_bridge converts to rgb8
    (with OpenCV): colour, mono8 and mono16 (scaled by 255/65535, either byte order), the four 8-bit
    Bayer patterns (demosaiced), and the packed 4:2:2 YUV layouts (UYVY, YUY2). Raises
    ImageEncodingError for other encodings and ConversionError for inconsistent sizes."""
    encoding = msg.encoding.lower()
    if encoding not in _IMAGE_ENCODINGS:
        raise ImageEncodingError(
            f"image encoding '{msg.encoding}' is not supported; publish one of {', '.join(_IMAGE_ENCODINGS)}"
        )
    pixel_bytes, sample, conversion = _IMAGE_ENCODINGS[encoding]
    height, width = int(msg.height), int(msg.width)
    if pixel_bytes == 2 and sample == "u1" and width % 2:
        raise ConversionError(f"image: a 4:2:2 YUV row holds pixel pairs, got an odd width of {width}")
    rows = _rows(msg.data, height, width * pixel_bytes, int(msg.step), "image")
    if sample == "u2":
        order = ">" if getattr(msg, "is_bigendian", False) else "<"
        samples = np.ascontiguousarray(rows).view(f"{order}u2").reshape(height, width)
        # cv_bridge's 16 -> 8 bit conversion: x * 255 / 65535, rounded.
        pixels = cv2.convertScaleAbs(samples.astype(np.float32), alpha=255.0 / 65535.0)
    else:
        # Still a view of the message's buffer (rows keep their step), which rclpy may reuse.
        pixels = rows.reshape((height, width, pixel_bytes) if pixel_bytes > 1 else (height, width))
    if height == 0 or width == 0:
        return np.zeros((height, width, 3), np.uint8)
    # One copy out of the buffer either way: np.array's, or OpenCV's output.
    return np.array(pixels) if conversion is None else cv2.cvtColor(np.ascontiguousarray(pixels), conversion)


def camera_projection(info: object, width: int, height: int) -> np.ndarray:
    """The 3x4 projection P of a CameraInfo that describes a rectified image of width x height.
    Raises CameraInfoError when the sizes differ or P is unusable."""
    if (int(info.width), int(info.height)) != (width, height):
        raise CameraInfoError(f"CameraInfo is for {info.width} x {info.height}, the image is {width} x {height}")
    projection = np.asarray(info.p, dtype=np.float64).reshape(3, 4)
    if not np.all(np.isfinite(projection)) or projection[0, 0] <= 0 or projection[1, 1] <= 0:
        raise CameraInfoError("CameraInfo P has no positive focal lengths (camera not calibrated?)")
    return projection


def pointcloud2_fields(msg: object) -> np.ndarray:
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


def pointcloud2_to_points(msg: object) -> np.ndarray:
    """x, y, z of every point of a PointCloud2 as an N x 3 float64 array, non-finite points removed.
    Encoder, decoder and ``pcic bag decode`` all read their scans through this, so they project the
    same points."""
    points = pointcloud2_fields(msg)
    missing = [axis for axis in "xyz" if axis not in (points.dtype.names or ())]
    if missing:
        raise ConversionError(f"point cloud has no {', '.join(missing)} field")
    xyz = np.stack([points[axis].astype(np.float64) for axis in "xyz"], axis=1)
    return xyz[np.isfinite(xyz).all(axis=1)]


def quaternion_to_matrix(x: float, y: float, z: float, w: float) -> np.ndarray:
    """3x3 rotation matrix of a quaternion (normalised first); ConversionError for a zero or
    non-finite one."""
    norm = np.sqrt(x * x + y * y + z * z + w * w)
    if not np.isfinite(norm) or norm == 0.0:
        raise ConversionError(f"quaternion ({x}, {y}, {z}, {w}) is not a rotation")
    x, y, z, w = x / norm, y / norm, z / norm, w / norm
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quaternion(rotation: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, z, w) unit quaternion of a 3x3 rotation, orthonormalised first (the nearest rotation, by
    SVD). Shepperd's method: dividing by the largest of the four magnitudes keeps it stable at any angle."""
    u, _, vt = np.linalg.svd(np.asarray(rotation, dtype=np.float64))
    m = u @ vt
    trace = float(np.trace(m))
    largest = int(np.argmax([trace, m[0, 0], m[1, 1], m[2, 2]]))
    if largest == 0:
        s = 2.0 * np.sqrt(1.0 + trace)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, s / 4]
    else:
        i = largest - 1
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = [0.0, 0.0, 0.0, (m[k, j] - m[j, k]) / s]
        q[i] = s / 4
        q[j] = (m[j, i] + m[i, j]) / s
        q[k] = (m[k, i] + m[i, k]) / s
    return tuple(float(v) for v in q)


def transform_to_matrix(translation: Sequence[float], quaternion: Sequence[float]) -> np.ndarray:
    """4x4 rigid transform of a translation (x, y, z) and a rotation quaternion (x, y, z, w)."""
    matrix = np.eye(4)
    matrix[:3, :3] = quaternion_to_matrix(*quaternion)
    matrix[:3, 3] = translation
    return matrix


def calibration_fields(calibration: Calibration) -> tuple[list[float], list[float]]:
    """The values of CompressedFrame's ``projection`` (P, 3x4) and ``camera_from_lidar`` (T, 4x4),
    row-major float64: what ``Calibration.from_matrices`` takes back, bit for bit."""
    if not np.array_equal(calibration.rectification, np.eye(4)):
        raise CalibrationError("a frame carries P and T_camera_lidar: fold the rectification into T first")
    return calibration.projection.ravel().tolist(), calibration.lidar_to_camera.ravel().tolist()


def carried_calibration(frame: object) -> Calibration | None:
    """The calibration a CompressedFrame was coded with, exactly, or None when it carries none (coded
    without a scan, or recorded before the message had these fields). CalibrationError when the
    numbers cannot be a calibration."""
    projection = np.asarray(getattr(frame, "projection", ()), dtype=np.float64)
    camera_from_lidar = np.asarray(getattr(frame, "camera_from_lidar", ()), dtype=np.float64)
    if projection.size == 0 or not projection.any():
        return None
    return Calibration.from_matrices(projection.reshape(3, 4), camera_from_lidar.reshape(4, 4))
