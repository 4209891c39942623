"""Data loaders for the KITTI family: camera image + LiDAR scan + calibration, per frame.

Three on-disk layouts are read (see ../shared/data/README.md); each works on the full downloads too:

- KITTI raw: ``<root>/<date>/calib_cam_to_cam.txt``, ``calib_velo_to_cam.txt`` and
  ``<date>/<drive>/image_0X/data/*.png`` with ``velodyne_points/data/*.bin``. Both colour cameras
  are read where a drive has them (``image_02`` projects with ``P_rect_02``, ``image_03`` with
  ``P_rect_03``): each camera's image with the same scan is one frame.
- KITTI 3D object: ``<root>/training/{image_2,velodyne,calib}`` (and ``testing``).
- KITTI-360 frames converted to the object layout: read as KITTI object.

A frame's ``sequence`` names the recording it comes from (the drive for KITTI raw, the folder for the
object layouts), so that splits never put frames of one sequence on both sides.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pcic_ros.codec.projection import Calibration
from pcic_ros.errors import PcicError

__all__ = ["Frame", "load_image", "load_scan", "discover_frames", "default_data_dir", "DataError"]


def default_data_dir() -> Path:
    """Where the KITTI frames are by default: $PCIC_DATA, else the ``shared/data`` folder beside the
    checkout (as this project's machines have it)."""
    if os.environ.get("PCIC_DATA"):
        return Path(os.environ["PCIC_DATA"])
    return Path(__file__).resolve().parents[3] / "shared" / "data"


class DataError(PcicError, ValueError):
    """A data folder, image or scan is missing or malformed."""


@dataclass(frozen=True)
class Frame:
    """One camera frame with its scan and calibration."""

    name: str
    layout: str
    sequence: str
    image_path: Path
    scan_path: Path
    calibration_path: Path
    #: The KITTI camera index (2: left colour, 3: right colour); picks P_rect_0X for KITTI raw.
    camera: int = 2

    def image(self) -> np.ndarray:
        return load_image(self.image_path)

    def scan(self) -> np.ndarray:
        return load_scan(self.scan_path)

    def calibration(self) -> Calibration:
        if self.layout == "kitti_raw":
            return Calibration.from_kitti_raw(self.calibration_path, camera=self.camera)
        return Calibration.from_kitti_object(self.calibration_path)


def load_image(path: str | Path) -> np.ndarray:
    """An image file as H x W x 3 uint8 RGB. 16-bit images are scaled to 8 bits (not clipped, which
    would turn most of a camera's 16-bit frame white); DataError for anything unreadable."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a folder, not an image")
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            mode, pixels = image.mode, np.asarray(image)
            rgb = np.asarray(image.convert("RGB")) if not mode.startswith("I") else None
    except Image.DecompressionBombError as error:
        raise DataError(f"{path}: refused as a decompression bomb ({error})") from None
    except (OSError, SyntaxError, ValueError) as error:  # UnidentifiedImageError is an OSError
        raise DataError(f"{path}: not a readable image ({error})") from None
    if rgb is not None:
        return rgb
    # Integer grey ("I;16" and its byte orders, "I"): 16-bit samples, scaled as cv_bridge scales mono16.
    if pixels.min() < 0 or pixels.max() > 65535:
        raise DataError(f"{path}: {mode} samples outside 0..65535 are not an image this codec takes")
    grey = ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


#: Metres within which a scan's points must mostly lie (KITTI's HDL-64E reaches 120 m). Other numbers
#: that happen to fill whole 16-byte points read as float32 far beyond it or absurdly close to 0: the
#: halves of float64 values come out as 0, +-3.7e19 and +-1e-19 (a KITTI scan so read keeps 20 % of its
#: points plausible; a real one 99.99 %).
PLAUSIBLE_RANGE_M = 1000.0
#: Coordinates closer to 0 than this but not 0 (a micrometre) do not come out of a LiDAR driver.
_IMPLAUSIBLY_SMALL_M = 1e-6


def load_scan(path: str | Path) -> np.ndarray:
    """A KITTI Velodyne .bin file: float32 x, y, z, reflectance, as an N x 4 array. DataError for a
    file that is not a whole number of points, or whose numbers are not float32 coordinates."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"scan not found: {path}")
    size = path.stat().st_size
    if size % 16:
        raise DataError(f"{path}: {size} bytes is not a whole number of 16-byte points (float32 x, y, z, r)")
    points = np.fromfile(path, dtype="<f4").reshape(-1, 4)
    with np.errstate(invalid="ignore"):
        magnitude = np.abs(points[:, :3])
        tiny = ((magnitude > 0) & (magnitude < _IMPLAUSIBLY_SMALL_M)).any(axis=1)
        plausible = np.isfinite(points).all(axis=1) & (magnitude < PLAUSIBLE_RANGE_M).all(axis=1) & ~tiny
    if points.shape[0] and plausible.mean() < 0.5:
        raise DataError(
            f"{path}: only {100 * plausible.mean():.0f} % of its points lie within {PLAUSIBLE_RANGE_M:g} m: "
            "not float32 x, y, z, r (a scan of float64 values?)"
        )
    return points


#: The colour cameras of a KITTI raw drive, in the order their frames are listed.
KITTI_RAW_COLOUR_CAMERAS: tuple[int, ...] = (2, 3)


def _kitti_raw_frames(date_dir: Path) -> Iterator[Frame]:
    for drive in sorted(p for p in date_dir.iterdir() if p.is_dir()):
        for camera in KITTI_RAW_COLOUR_CAMERAS:
            for image_path in sorted((drive / f"image_0{camera}" / "data").glob("*.png")):
                scan_path = drive / "velodyne_points" / "data" / f"{image_path.stem}.bin"
                if scan_path.is_file():
                    yield Frame(image_path.stem, "kitti_raw", drive.name, image_path, scan_path, date_dir, camera)


def _kitti_object_frames(split_dir: Path, layout: str, sequence: str) -> Iterator[Frame]:
    for image_path in sorted((split_dir / "image_2").glob("*.png")):
        scan_path = split_dir / "velodyne" / f"{image_path.stem}.bin"
        calib_path = split_dir / "calib" / f"{image_path.stem}.txt"
        if scan_path.is_file() and calib_path.is_file():
            yield Frame(image_path.stem, layout, sequence, image_path, scan_path, calib_path)


def discover_frames(root: str | Path) -> list[Frame]:
    """Every frame with image, scan and calibration below ``root``, in a stable order.

    ``root`` may be a folder holding several datasets (like ../shared/data), one dataset, a KITTI raw
    date folder, or an object-layout split folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    frames: list[Frame] = []
    for calib in sorted(root.rglob("calib_cam_to_cam.txt")):
        frames.extend(_kitti_raw_frames(calib.parent))
    for image_dir in sorted(root.rglob("image_2")):
        split_dir = image_dir.parent
        # KITTI-360 in object layout reads exactly like KITTI object; the folder names the sequence.
        relative = split_dir.relative_to(root).as_posix()
        sequence = relative if relative != "." else split_dir.name
        frames.extend(_kitti_object_frames(split_dir, "kitti_object", sequence))
    if not frames:
        raise DataError(f"no KITTI frames (image + scan + calibration) found below {root}")
    return frames
