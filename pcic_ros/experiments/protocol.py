"""The evaluation protocol shared by training's validation, ``pcic eval``, the studies and the
benchmarks: which frames are held out, and which part of each frame is coded.

- Splits never cut a sequence: a frame goes to validation when its ``Frame.sequence`` matches one of
  the validation patterns (shell-style, ``fnmatch``), to training otherwise. The default holds out the
  KITTI 3D object frames (27 frames from many drives) and trains on the KITTI raw drives and the
  KITTI-360 sequence; for a full download name the held-out drives instead, e.g.
  ``2011_09_26_drive_0005_sync``.
- ``crop_box`` and ``crop_calibration`` implement the evaluation crop: the paper evaluates KITTI on
  1242 x 256, the bottom rows that the LiDAR covers.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from pcic_ros.codec.projection import Calibration
from pcic_ros.errors import InvalidArgumentError
from pcic_ros.experiments.datasets import Frame

__all__ = ["DEFAULT_VALIDATION_SEQUENCES", "PAPER_CROP", "Split", "split_by_sequence", "crop_box", "crop_calibration"]

#: Sequences held out for validation by default: the KITTI 3D object frames (``*/kitti_object/*``).
DEFAULT_VALIDATION_SEQUENCES: tuple[str, ...] = ("*kitti_object/*",)

#: The paper's KITTI evaluation crop, (height, width): 256 rows, 1242 columns.
PAPER_CROP: tuple[int, int] = (256, 1242)


@dataclass(frozen=True)
class Split:
    """Frames for training and for validation; no sequence has frames in both."""

    train: list[Frame]
    validation: list[Frame]

    def part(self, name: str) -> list[Frame]:
        """'train', 'validation' or 'all'."""
        if name == "all":
            return self.train + self.validation
        if name in ("train", "validation"):
            return getattr(self, name)
        raise InvalidArgumentError(f"unknown split '{name}': choose train, validation or all")


def split_by_sequence(
    frames: Sequence[Frame], validation_sequences: Sequence[str] = DEFAULT_VALIDATION_SEQUENCES
) -> Split:
    """Send every frame whose sequence matches a validation pattern to validation, the rest to training."""

    def held_out(frame: Frame) -> bool:
        return any(fnmatch.fnmatchcase(frame.sequence, pattern) for pattern in validation_sequences)

    return Split(
        train=[frame for frame in frames if not held_out(frame)],
        validation=[frame for frame in frames if held_out(frame)],
    )


def crop_box(height: int, width: int, crop: tuple[int, int] | None) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) of the evaluation crop: the bottom ``crop[0]`` rows (the ones
    the LiDAR covers; the sky above has no points) and the middle ``crop[1]`` columns, each clipped to
    the image. ``None`` keeps the whole image."""
    if crop is None:
        return 0, 0, height, width
    crop_height, crop_width = min(crop[0], height), min(crop[1], width)
    return height - crop_height, (width - crop_width) // 2, crop_height, crop_width


def crop_calibration(calibration: Calibration, top: int, left: int) -> Calibration:
    """The calibration of the cropped camera: its pixel (u, v) is the original's (u + left, v + top)."""
    projection = calibration.projection.copy()
    projection[0] -= left * projection[2]
    projection[1] -= top * projection[2]
    return Calibration(projection, calibration.rectification, calibration.lidar_to_camera)
