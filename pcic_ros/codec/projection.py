"""Point cloud projection (paper eq. 1-3): LiDAR scan -> sparse depth map c_proj -> equalised depth.

The projection is computed in float64 with element-wise operations only (no BLAS matrix products), so
that the pixel each point lands on and its depth do not depend on the BLAS build or thread count: the
decoder must rebuild exactly the depth map the encoder used.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pcic_ros.errors import InvalidArgumentError, PcicError

__all__ = [
    "CalibrationError",
    "Calibration",
    "project_points",
    "equalize_depth",
    "depth_fingerprint",
    "DEFAULT_DEPTH_LEVELS",
]

#: Default s of eq. 3: the normalised depth is rounded onto the integers 0..s before equalisation.
DEFAULT_DEPTH_LEVELS = 255


class CalibrationError(PcicError, ValueError):
    """A calibration file or matrix is missing, malformed or not invertible as required."""


def compose_exactly(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b of small float64 matrices by broadcasting and a fixed-order sum: the vehicle and the base
    station must compute the same transforms to the last bit (they decide which pixel each point
    lands on), and BLAS products may differ between machines."""
    return (a[:, :, None] * b[None, :, :]).sum(axis=1)


def _as_matrix(values: object, shape: tuple[int, int], name: str) -> np.ndarray:
    try:
        matrix = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise CalibrationError(f"{name}: not numeric ({error})") from None
    if matrix.size != shape[0] * shape[1]:
        raise CalibrationError(f"{name}: expected {shape[0]}x{shape[1]} values, got {matrix.size}")
    matrix = matrix.reshape(shape)
    if not np.all(np.isfinite(matrix)):
        raise CalibrationError(f"{name}: contains NaN or infinity")
    return matrix


def _homogeneous(matrix: np.ndarray) -> np.ndarray:
    """Pad a 3x3 rotation or a 3x4 rigid transform to 4x4."""
    out = np.eye(4)
    out[: matrix.shape[0], : matrix.shape[1]] = matrix
    return out


def _read_key_values(path: Path) -> dict[str, list[float] | str]:
    """Each ``key: numbers`` line of a KITTI calibration file; the text of a line that is not numbers
    (calib_time needs none; a key that is needed says so in ``_require``)."""
    if not path.is_file():
        raise CalibrationError(f"calibration file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CalibrationError(f"{path}: not a text calibration file") from None
    values: dict[str, list[float] | str] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        key = key.strip()
        if key in values:
            raise CalibrationError(f"{path}: '{key}' is given twice")
        try:
            values[key] = [float(v) for v in rest.split()]
        except ValueError:
            values[key] = rest.strip()
    return values


def _require(values: dict[str, list[float] | str], key: str, path: Path) -> list[float]:
    if key not in values:
        raise CalibrationError(f"{path}: missing '{key}'")
    if isinstance(values[key], str):
        raise CalibrationError(f"{path}: '{key}' is not a list of numbers: {values[key][:60]!r}")
    return values[key]


#: How far from orthonormal a calibration's rotation may be: KITTI prints 6-7 digits (about 1e-6).
_ROTATION_TOLERANCE = 1e-3


def _check_rotation(rotation: np.ndarray, name: str) -> None:
    """A rotation is orthonormal with determinant +1: a typo in one entry, or a scaled transform, is not."""
    error = np.abs(rotation @ rotation.T - np.eye(3)).max()
    if error > _ROTATION_TOLERANCE or np.linalg.det(rotation) < 0:
        raise CalibrationError(
            f"{name}: its rotation is not a rotation (R R^T differs from I by {error:.3g}, "
            f"det {np.linalg.det(rotation):.3g})"
        )


def _check_projection(projection: np.ndarray, name: str) -> None:
    if np.linalg.matrix_rank(projection[:, :3]) < 3:
        raise CalibrationError(f"{name}: its left 3x3 block is singular, so it projects nothing")


@dataclass(frozen=True)
class Calibration:
    """Everything eq. 2 needs: c_proj = P_rect * R_rect * T_cam_lidar * c_raw.

    Attributes:
        projection: 3x4 rectified projection matrix P_rect (or K with a zero fourth column).
        rectification: 4x4 rectifying rotation R_rect (identity for already rectified cameras).
        lidar_to_camera: 4x4 rigid transform T_cam_lidar taking LiDAR points into the camera frame.
    """

    projection: np.ndarray
    rectification: np.ndarray
    lidar_to_camera: np.ndarray
    #: (width, height) of the images this calibration is for, where the calibration says (KITTI raw's
    #: S_rect_0X); None where it does not.
    image_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "projection", _as_matrix(self.projection, (3, 4), "P"))
        object.__setattr__(self, "rectification", _as_matrix(self.rectification, (4, 4), "R_rect"))
        object.__setattr__(self, "lidar_to_camera", _as_matrix(self.lidar_to_camera, (4, 4), "T_cam_lidar"))
        _check_projection(self.projection, "P")
        _check_rotation(self.rectification[:3, :3], "R_rect")
        _check_rotation(self.lidar_to_camera[:3, :3], "T_cam_lidar")

    def check_image_size(self, height: int, width: int) -> None:
        """CalibrationError when the calibration is for images of another size."""
        if self.image_size is not None and tuple(self.image_size) != (width, height):
            raise CalibrationError(
                f"the calibration is for {self.image_size[0]} x {self.image_size[1]} images, "
                f"this one is {width} x {height} (another camera's calibration?)"
            )

    @property
    def lidar_to_image(self) -> np.ndarray:
        """The 3x4 matrix P_rect * R_rect * T_cam_lidar of eq. 2."""
        return compose_exactly(compose_exactly(self.projection, self.rectification), self.lidar_to_camera)

    @classmethod
    def from_matrices(cls, camera_matrix: np.ndarray, lidar_to_camera: np.ndarray) -> Calibration:
        """Generic camera: K (3x3) or P (3x4), e.g. from sensor_msgs/CameraInfo, and a 4x4 T_cam_lidar."""
        camera = np.asarray(camera_matrix, dtype=np.float64)
        if camera.shape == (3, 3):
            camera = np.hstack([camera, np.zeros((3, 1))])
        elif camera.shape != (3, 4):
            raise CalibrationError(f"camera matrix must be 3x3 (K) or 3x4 (P), got {camera.shape}")
        transform = _as_matrix(lidar_to_camera, (4, 4), "T_cam_lidar")
        if not np.allclose(transform[3], [0.0, 0.0, 0.0, 1.0]):
            raise CalibrationError("T_cam_lidar: last row must be [0, 0, 0, 1]")
        return cls(camera, np.eye(4), transform)

    @classmethod
    def from_kitti(cls, path: str | Path) -> Calibration:
        """A KITTI raw date folder (calib_cam_to_cam.txt + calib_velo_to_cam.txt) or a KITTI object
        calibration file, camera 2."""
        path = Path(path)
        return cls.from_kitti_raw(path) if path.is_dir() else cls.from_kitti_object(path)

    @classmethod
    def from_kitti_object(cls, path: str | Path, camera: int = 2) -> Calibration:
        """KITTI 3D object layout: one file with P0..P3, R0_rect and Tr_velo_to_cam."""
        path = Path(path)
        values = _read_key_values(path)
        projection = _as_matrix(_require(values, f"P{camera}", path), (3, 4), f"P{camera}")
        rectification = _as_matrix(_require(values, "R0_rect", path), (3, 3), "R0_rect")
        velo_to_cam = _as_matrix(_require(values, "Tr_velo_to_cam", path), (3, 4), "Tr_velo_to_cam")
        return cls(projection, _homogeneous(rectification), _homogeneous(velo_to_cam))

    @classmethod
    def from_kitti_raw(cls, date_dir: str | Path, camera: int = 2) -> Calibration:
        """KITTI raw layout: calib_cam_to_cam.txt (P_rect_0X, R_rect_00) and calib_velo_to_cam.txt (R, T)."""
        date_dir = Path(date_dir)
        cam_path = date_dir / "calib_cam_to_cam.txt"
        velo_path = date_dir / "calib_velo_to_cam.txt"
        cam = _read_key_values(cam_path)
        velo = _read_key_values(velo_path)
        projection = _as_matrix(_require(cam, f"P_rect_0{camera}", cam_path), (3, 4), f"P_rect_0{camera}")
        # All rectified KITTI cameras share the reference camera's rectification R_rect_00.
        rectification = _as_matrix(_require(cam, "R_rect_00", cam_path), (3, 3), "R_rect_00")
        rotation = _as_matrix(_require(velo, "R", velo_path), (3, 3), "R")
        translation = _as_matrix(_require(velo, "T", velo_path), (3, 1), "T")
        velo_to_cam = np.hstack([rotation, translation])
        size_key = f"S_rect_0{camera}"
        size = tuple(int(round(v)) for v in _require(cam, size_key, cam_path)) if size_key in cam else None
        if size is not None and len(size) != 2:
            raise CalibrationError(f"{cam_path}: '{size_key}' must be width and height")
        return cls(projection, _homogeneous(rectification), _homogeneous(velo_to_cam), size)


def _validate_points(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 3:
        raise InvalidArgumentError(f"scan must be an N x 3 or N x 4 array of LiDAR points, got shape {points.shape}")
    return points[:, :3].astype(np.float64, copy=False)


def project_points(points: np.ndarray, calibration: Calibration, height: int, width: int) -> np.ndarray:
    """Project a LiDAR scan into the camera (eq. 2) and return the sparse depth map c_proj.

    Args:
        points: N x 3 or N x 4 (x, y, z[, reflectance]) in the LiDAR frame, metres.
        calibration: the camera/LiDAR calibration.
        height, width: size of the camera image.

    Returns:
        float32 array of shape (height, width): the depth (camera z, metres) of the nearest point that
        lands on each pixel, 0 where no point lands. Points with NaN/inf coordinates, behind the camera,
        beyond float32's range or outside the image are dropped.
    """
    if height <= 0 or width <= 0:
        raise InvalidArgumentError(f"image size must be positive, got {height} x {width}")
    xyz = _validate_points(points)
    depth_map = np.zeros((height, width), dtype=np.float32)
    if xyz.shape[0] == 0:
        return depth_map
    matrix = calibration.lidar_to_image
    x, y, z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    with np.errstate(invalid="ignore", over="ignore"):
        u_h = matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2] * z + matrix[0, 3]
        v_h = matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2] * z + matrix[1, 3]
        depth = matrix[2, 0] * x + matrix[2, 1] * y + matrix[2, 2] * z + matrix[2, 3]
        # The depth map is float32: a point too far for it (a corrupt coordinate) would land as inf.
        in_front = np.isfinite(depth) & (depth > 0) & (depth <= np.finfo(np.float32).max)
        u = np.floor(u_h[in_front] / depth[in_front])
        v = np.floor(v_h[in_front] / depth[in_front])
    depth = depth[in_front]
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    u, v, depth = u[inside].astype(np.int64), v[inside].astype(np.int64), depth[inside]
    pixel = v * width + u
    # The nearest point wins: sort by (pixel, depth) and keep the first entry of each pixel.
    order = np.lexsort((depth, pixel))
    pixel, depth = pixel[order], depth[order]
    first = np.ones(pixel.shape[0], dtype=bool)
    first[1:] = pixel[1:] != pixel[:-1]
    depth_map.reshape(-1)[pixel[first]] = depth[first].astype(np.float32)
    return depth_map


def equalize_depth(depth_map: np.ndarray, levels: int = DEFAULT_DEPTH_LEVELS) -> np.ndarray:
    """Normalisation and histogram equalisation of a sparse depth map (eq. 3).

    Only pixels that hold a point take part: the depth of those pixels is shifted by its minimum,
    scaled to the integers 0..s (s = ``levels``) and rounded, then histogram-equalised over the
    occupied pixels. The result is uint8: 0 where there is no point, 1..255 where there is one (the
    equalised CDF, so the nearest level maps low and the farthest to 255). Integer output means the
    network input, and the fingerprint built on it, are exact on every machine.
    """
    if levels < 1:
        raise ValueError(f"levels (s of eq. 3) must be >= 1, got {levels}")
    depth_map = np.asarray(depth_map)
    if depth_map.ndim != 2:
        raise ValueError(f"depth map must be 2-D (H x W), got shape {depth_map.shape}")
    out = np.zeros(depth_map.shape, dtype=np.uint8)
    occupied = depth_map > 0
    count = int(occupied.sum())
    if count == 0:
        return out
    depth = depth_map[occupied].astype(np.float64)
    if not np.all(np.isfinite(depth)):
        raise ValueError("depth map holds non-finite depths")
    span = depth.max() - depth.min()
    if span > 0:
        quantised = np.rint((depth - depth.min()) / span * levels).astype(np.int64)
    else:
        quantised = np.zeros(count, dtype=np.int64)
    cdf = np.cumsum(np.bincount(quantised, minlength=levels + 1))
    # Integer arithmetic: equalised level = ceil(255 * cdf / count), always in 1..255 for occupied pixels.
    equalised = (cdf[quantised] * 255 + count - 1) // count
    out[occupied] = equalised.astype(np.uint8)
    return out


def depth_fingerprint(equalized: np.ndarray) -> bytes:
    """8-byte fingerprint of an equalised depth map (its shape and every value): the bitstream carries
    it so that a decoder holding another scan or calibration refuses instead of decoding garbage."""
    equalized = np.ascontiguousarray(equalized, dtype=np.uint8)
    digest = hashlib.sha256()
    digest.update(np.asarray(equalized.shape, dtype="<u4").tobytes())
    digest.update(equalized.tobytes())
    return digest.digest()[:8]
