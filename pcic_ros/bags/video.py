"""``pcic bag decode --video``: a bag you can watch. Each compressed frame becomes one video frame, the
camera's original above what the base station decodes, with the frame's stamp, bits per pixel and
PSNR drawn on it. OpenCV writes the file (mp4v for .mp4, MJPG for .avi), as it already converts the
camera encodings.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pcic_ros.errors import InvalidArgumentError

__all__ = ["SideBySideVideo", "frame_rate"]

_FOURCC = {".mp4": "mp4v", ".avi": "MJPG"}
_GREY = 64


def frame_rate(stamps_ns: list[int], default: float = 10.0) -> float:
    """Frames per second of a stream stamped ``stamps_ns``: the median spacing (robust to a dropped
    frame), ``default`` for fewer than two stamps."""
    spacing = np.diff(sorted(stamps_ns))
    spacing = spacing[spacing > 0]
    return float(1e9 / np.median(spacing)) if len(spacing) else default


class SideBySideVideo:
    """A video of ``width`` x ``height`` frames shown as original (top) and decoded (bottom)."""

    def __init__(self, path: str | Path, width: int, height: int, fps: float) -> None:
        path = Path(path)
        if path.suffix.lower() not in _FOURCC:
            raise InvalidArgumentError(f"--video {path}: give a .mp4 or .avi file name")
        # Most encoders want even sides: the panels are padded by a row or column where needed.
        self.width, self.height = width + width % 2, height + height % 2
        fourcc = cv2.VideoWriter_fourcc(*_FOURCC[path.suffix.lower()])
        self._writer = cv2.VideoWriter(str(path), fourcc, fps, (self.width, 2 * self.height))
        if not self._writer.isOpened():
            raise InvalidArgumentError(f"--video {path}: OpenCV cannot write this file")

    def _panel(self, image: np.ndarray | None, text: str) -> np.ndarray:
        panel = np.full((self.height, self.width, 3), _GREY, np.uint8)
        if image is not None:
            if image.shape[:2] != panel.shape[:2]:
                image = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_AREA)
            panel[: image.shape[0], : image.shape[1]] = image
        scale = max(0.5, self.height / 400)
        for colour, thickness in (((0, 0, 0), 4), ((255, 255, 255), 1)):  # an outline keeps it readable
            origin = (10, int(30 * scale))
            cv2.putText(panel, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness, cv2.LINE_AA)
        return panel

    def add(self, original: np.ndarray | None, decoded: np.ndarray | None, original_text: str, text: str) -> None:
        """One frame: RGB ``original`` (None: not in the bag) above RGB ``decoded`` (None: not decoded),
        each with its caption."""
        rgb = np.concatenate([self._panel(original, original_text), self._panel(decoded, text)], axis=0)
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        self._writer.release()
