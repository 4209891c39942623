"""A small TF buffer: geometry_msgs/TransformStamped in, 4x4 transforms between any two frames out.

Static transforms (/tf_static) hold for all time; dynamic ones (/tf) are kept for ``cache_s`` seconds
per frame and interpolated (linear translation, spherical rotation) between the two neighbouring
stamps. A lookup never extrapolates: outside the cached span it fails, as a late TF should.
No rclpy and no message package needed: transforms are read by attribute (from rclpy or rosbags).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from pcic_ros.codec.projection import Calibration, CalibrationError, compose_exactly
from pcic_ros.errors import PcicError
from pcic_ros.ros.messages import (
    CameraInfoError,
    ConversionError,
    camera_projection,
    matrix_to_quaternion,
    stamp_to_ns,
    transform_to_matrix,
)

__all__ = ["TransformError", "TransformBuffer", "matrix_from_transform", "transform_from_matrix", "frame_calibration"]


class TransformError(PcicError, LookupError):
    """No transform between the frames at the requested time (unknown frame, or not yet received)."""


def _matrix(translation: np.ndarray, quaternion: np.ndarray) -> np.ndarray:
    try:
        return transform_to_matrix(translation, quaternion)
    except ConversionError as error:
        raise TransformError(f"transform has an invalid rotation: {error}") from None


def _frame_id(frame: str) -> str:
    """A frame id as tf2 takes it: one with a leading '/' (ROS 1 style) is refused, not stripped."""
    if frame.startswith("/"):
        raise TransformError(f"frame id '{frame}' starts with '/': tf2 refuses such ids, so this buffer does")
    return frame


def _parts(msg: object) -> tuple[np.ndarray, np.ndarray]:
    t, q = msg.transform.translation, msg.transform.rotation
    return np.array([t.x, t.y, t.z], dtype=np.float64), np.array([q.x, q.y, q.z, q.w], dtype=np.float64)


def matrix_from_transform(msg: object) -> np.ndarray:
    """4x4 matrix taking points in ``msg.child_frame_id`` to ``msg.header.frame_id``."""
    return _matrix(*_parts(msg))


def transform_from_matrix(matrix: np.ndarray, parent: str, child: str, stamp_ns: int = 0) -> object:
    """A geometry_msgs/TransformStamped (parent <- child) for a 4x4 rigid transform; the rotation is
    orthonormalised."""
    from geometry_msgs.msg import Quaternion, TransformStamped

    from pcic_ros.ros.conversions import ns_to_stamp

    matrix = np.asarray(matrix, dtype=np.float64)
    qx, qy, qz, qw = matrix_to_quaternion(matrix[:3, :3])
    msg = TransformStamped()
    msg.header.frame_id = parent
    msg.header.stamp = ns_to_stamp(stamp_ns)
    msg.child_frame_id = child
    msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = (
        float(v) for v in matrix[:3, 3]
    )
    msg.transform.rotation = Quaternion(x=qx, y=qy, z=qz, w=qw)
    return msg


def _rigid_inverse(matrix: np.ndarray) -> np.ndarray:
    inverse = np.eye(4)
    inverse[:3, :3] = matrix[:3, :3].T
    inverse[:3, 3] = -(matrix[:3, :3].T * matrix[:3, 3][None, :]).sum(axis=1)
    return inverse


def _slerp(q0: np.ndarray, q1: np.ndarray, ratio: float) -> np.ndarray:
    q0, q1 = q0 / np.linalg.norm(q0), q1 / np.linalg.norm(q1)
    dot = float(np.dot(q0, q1))
    if dot < 0.0:  # q and -q are one rotation; take the short way round.
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + ratio * (q1 - q0)
        return q / np.linalg.norm(q)
    angle = np.arccos(dot)
    return (np.sin((1 - ratio) * angle) * q0 + np.sin(ratio * angle) * q1) / np.sin(angle)


@dataclass
class _History:
    """The transforms of one child frame to its parent, by stamp."""

    parent: str
    static: tuple[np.ndarray, np.ndarray] | None = None
    stamps: list[int] = field(default_factory=list)
    parts: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    def at(self, time_ns: int) -> np.ndarray:
        if self.static is not None:
            return _matrix(*self.static)
        index = bisect.bisect_left(self.stamps, time_ns)
        if index < len(self.stamps) and self.stamps[index] == time_ns:
            return _matrix(*self.parts[index])
        if index == 0 or index == len(self.stamps):
            raise TransformError(f"no transform at {time_ns} ns (have {self.stamps[0]}..{self.stamps[-1]} ns)")
        before, after = self.stamps[index - 1], self.stamps[index]
        ratio = (time_ns - before) / (after - before)
        (t0, q0), (t1, q1) = self.parts[index - 1], self.parts[index]
        return _matrix(t0 + ratio * (t1 - t0), _slerp(q0, q1, ratio))


class TransformBuffer:
    """Transforms received from /tf and /tf_static, looked up as 4x4 matrices between frames."""

    def __init__(self, cache_s: float = 10.0) -> None:
        self._cache_ns = int(cache_s * 1e9)
        self._frames: dict[str, _History] = {}

    def add(self, msg: object, static: bool) -> None:
        child, parent = _frame_id(msg.child_frame_id), _frame_id(msg.header.frame_id)
        if not child or not parent or child == parent:
            raise TransformError(f"transform '{parent}' <- '{child}' does not link two frames")
        history = self._frames.get(child)
        if history is None or history.parent != parent or static != (history.static is not None):
            # A frame has one parent at a time; a re-parented or re-typed frame starts afresh.
            history = self._frames[child] = _History(parent)
        parts = _parts(msg)
        if static:
            history.static = parts
            return
        stamp = stamp_to_ns(msg.header.stamp)
        index = bisect.bisect_left(history.stamps, stamp)
        if index < len(history.stamps) and history.stamps[index] == stamp:
            history.parts[index] = parts
        else:
            history.stamps.insert(index, stamp)
            history.parts.insert(index, parts)
        cutoff = bisect.bisect_left(history.stamps, history.stamps[-1] - self._cache_ns)
        del history.stamps[:cutoff], history.parts[:cutoff]

    def _chain(self, frame: str) -> list[str]:
        """``frame`` and its ancestors up to its root."""
        chain = [frame]
        while chain[-1] in self._frames:
            chain.append(self._frames[chain[-1]].parent)
            if len(chain) > 1000:
                raise TransformError(f"TF tree has a loop through '{frame}'")
        return chain

    def _to_ancestor(self, children: list[str], time_ns: int) -> np.ndarray:
        """The matrix taking points in ``children[0]`` into the parent of ``children[-1]``."""
        matrix = np.eye(4)
        for child in children:
            matrix = compose_exactly(self._frames[child].at(time_ns), matrix)
        return matrix

    def lookup(self, target: str, source: str, time_ns: int) -> np.ndarray:
        """4x4 matrix taking points in ``source`` to ``target`` at ``time_ns`` (0: the latest time all
        the transforms between them are known, as in tf2); raises TransformError. Only the transforms
        on the path between the two frames count, not those above their common ancestor."""
        target, source = _frame_id(target), _frame_id(source)
        if target == source:
            return np.eye(4)
        source_chain, target_chain = self._chain(source), self._chain(target)
        common = next((frame for frame in source_chain if frame in target_chain), None)
        if common is None:
            raise TransformError(f"frames '{source}' and '{target}' are not connected in TF")
        path = source_chain[: source_chain.index(common)], target_chain[: target_chain.index(common)]
        if time_ns == 0:
            # tf2's time 0: the latest stamp at which every dynamic transform on the path is known.
            dynamic = [self._frames[child] for child in path[0] + path[1] if self._frames[child].static is None]
            time_ns = min((history.stamps[-1] for history in dynamic), default=0)
        source_to_common, target_to_common = (self._to_ancestor(children, time_ns) for children in path)
        return compose_exactly(_rigid_inverse(target_to_common), source_to_common)


def frame_calibration(
    camera_info: object,
    transforms: TransformBuffer,
    camera_frame: str,
    lidar_frame: str,
    stamp_ns: int,
    width: int,
    height: int,
    extrinsic: np.ndarray | None = None,
) -> Calibration:
    """The calibration a frame is coded with: P from its CameraInfo, T_camera_lidar from TF at the
    scan's stamp (or ``extrinsic``). The encoder, the decoder and ``pcic bag decode`` all build it here
    from the same messages, so all three project a scan to the same pixels. Raises CameraInfoError
    (a CameraInfo of another size, or one that cannot project) or TransformError (no transform)."""
    projection = camera_projection(camera_info, width, height)
    if extrinsic is None:
        extrinsic = transforms.lookup(camera_frame, lidar_frame, stamp_ns)
    try:
        return Calibration.from_matrices(projection, extrinsic)
    except CalibrationError as error:
        raise CameraInfoError(str(error)) from None
