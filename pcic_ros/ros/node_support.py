"""What the encoder and decoder nodes share: calibration from CameraInfo and TF,
problem reporting and the statistics message."""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import rclpy
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile
from sensor_msgs.msg import CameraInfo

from pcic_ros.codec.projection import Calibration
from pcic_ros.errors import InvalidArgumentError, PcicError
from pcic_ros.msg import CodecStatistics
from pcic_ros.ros.messages import CameraInfoError
from pcic_ros.ros.tf_buffer import TransformBuffer, TransformError, frame_calibration

__all__ = [
    "CalibrationSource",
    "ProblemReporter",
    "StatisticsCollector",
    "spin_node",
    "put_newest",
]

#: Input problems counted in CodecStatistics, by field name.
PROBLEM_FIELDS = (
    "empty_scan",
    "nan_scan",
    "no_points_in_view",
    "tf_missing",
    "camera_info_mismatch",
    "bad_encoding",
    "corrupt_message",
    "scan_timeout",
)


class CalibrationSource:
    """The calibration of a frame: P from the latest CameraInfo, T_camera_lidar from TF at the scan's
    stamp (or from the ``fixed_extrinsic`` parameter). The vehicle and the base station build it with
    this same code from the same messages (``frame_calibration``), so both project the scan identically."""

    def __init__(self, node: Node, fixed_extrinsic: list[float]) -> None:
        self.transforms = TransformBuffer()
        self._camera_info: CameraInfo | None = None
        self._fixed: np.ndarray | None = None
        if fixed_extrinsic:
            if len(fixed_extrinsic) != 16:
                raise InvalidArgumentError(
                    f"fixed_extrinsic needs 16 values (row-major 4x4), got {len(fixed_extrinsic)}"
                )
            self._fixed = np.asarray(fixed_extrinsic, dtype=np.float64).reshape(4, 4)
        from tf2_msgs.msg import TFMessage

        # /tf_static is latched by its publishers: transient local to get what was sent before we started.
        static_qos = QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        node.create_subscription(TFMessage, "/tf_static", lambda msg: self._add(msg, True), static_qos)
        node.create_subscription(TFMessage, "/tf", lambda msg: self._add(msg, False), QoSProfile(depth=100))
        self._lock = threading.Lock()
        self._logger = node.get_logger()

    def _add(self, msg: object, static: bool) -> None:
        with self._lock:
            for transform in msg.transforms:
                try:
                    self.transforms.add(transform, static)
                except TransformError as error:
                    self._logger.warning(f"ignored a transform: {error}", throttle_duration_sec=10.0)

    def set_camera_info(self, info: CameraInfo) -> None:
        self._camera_info = info

    def calibration(self, camera_frame: str, lidar_frame: str, stamp_ns: int, width: int, height: int) -> Calibration:
        """Raises CameraInfoError (no or mismatching CameraInfo) or TransformError (no transform)."""
        if self._camera_info is None:
            raise CameraInfoError("no CameraInfo received yet")
        with self._lock:
            return frame_calibration(
                self._camera_info, self.transforms, camera_frame, lidar_frame, stamp_ns, width, height, self._fixed
            )


class ProblemReporter:
    """Counts input problems per cause and logs each cause at most once per ``period_s``."""

    def __init__(self, node: Node, period_s: float) -> None:
        self._logger = node.get_logger()
        self._period_s = period_s
        self._last_logged: dict[str, float] = {}
        self.counts = dict.fromkeys(PROBLEM_FIELDS, 0)

    def report(self, cause: str, message: str) -> None:
        self.counts[cause] += 1
        now = time.monotonic()
        last = self._last_logged.get(cause)
        if last is None or now - last >= self._period_s:
            self._last_logged[cause] = now
            self._logger.warning(f"[{cause}, {self.counts[cause]} so far] {message}")


@dataclass
class StatisticsCollector:
    """Counters (totals) and per-period means of one node, turned into CodecStatistics."""

    frames_in: int = 0
    frames_out: int = 0
    frames_dropped_queue: int = 0
    frames_dropped_budget: int = 0
    frames_zeros_fallback: int = 0
    frames_failed: int = 0
    last_bytes: int = 0
    current_quality: float = 0.0
    target_bits_per_second: float = 0.0
    _sizes: list[tuple[float, int, int]] = field(default_factory=list)
    _times_ms: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record_frame(self, size: int, pixels: int, elapsed_ms: float) -> None:
        with self._lock:
            self.last_bytes = size
            self._sizes.append((time.monotonic(), size, pixels))
            self._times_ms.append(elapsed_ms)

    def message(self, node: Node, problems: dict[str, int], queue_depth: int, period_s: float, encoder: bool):
        with self._lock:
            sizes, times = self._sizes, self._times_ms
            self._sizes, self._times_ms = [], []
        stats = CodecStatistics(node_name=node.get_fully_qualified_name())
        stats.header.stamp = node.get_clock().now().to_msg()
        for name in ("frames_in", "frames_out", "frames_dropped_queue", "frames_dropped_budget",
                     "frames_zeros_fallback", "frames_failed", "last_bytes"):  # fmt: skip
            setattr(stats, name, int(getattr(self, name)))
        stats.current_quality = float(self.current_quality)
        stats.target_bits_per_second = float(self.target_bits_per_second)
        if sizes:
            stats.mean_bytes = float(np.mean([s for _, s, _ in sizes]))
            stats.mean_bpp = float(np.mean([8.0 * s / p for _, s, p in sizes]))
            stats.bits_per_second = 8.0 * sum(s for _, s, _ in sizes) / period_s
        if times:
            mean, peak = float(np.mean(times)), float(np.max(times))
            if encoder:
                stats.encode_ms_mean, stats.encode_ms_max = mean, peak
            else:
                stats.decode_ms_mean, stats.decode_ms_max = mean, peak
        stats.queue_depth = queue_depth
        for name, count in problems.items():
            setattr(stats, name, count)
        return stats


def put_newest(jobs: queue.Queue, job: object) -> bool:
    """Queue ``job`` for a node's worker thread. When the queue is full the oldest queued job makes
    room: a worker slower than its input then codes the newest frames, where refusing the new job
    would have it work through a backlog that is always a full queue behind the input. Returns
    whether a job was dropped. Only one thread may put (the executor's), so the slot freed is ours."""
    try:
        jobs.put_nowait(job)
        return False
    except queue.Full:
        pass
    try:
        jobs.get_nowait()
        dropped = True
    except queue.Empty:  # The worker emptied the queue in the meantime.
        dropped = False
    jobs.put_nowait(job)
    return dropped


#: How long a stopping node waits for the frame its worker has in hand. ros2 launch escalates SIGINT to
#: SIGTERM after 5 s (its sigterm_timeout), and a HYPER-PC frame can take longer than that on a busy CPU;
#: a frame still in hand after this is abandoned (it would reach the other end stale anyway).
STOP_GRACE_S = 2.0


def stop_worker(jobs: queue.Queue, worker: threading.Thread) -> bool:
    """Drop the frames still queued for a node's worker thread and stop it after the frame in hand,
    waiting STOP_GRACE_S at most; False when the worker is still busy with it."""
    while True:
        try:
            jobs.get_nowait()
        except queue.Empty:
            break
    jobs.put(None)
    worker.join(timeout=STOP_GRACE_S)
    return not worker.is_alive()


class _Stopped(Exception):
    """SIGINT or SIGTERM arrived while the node was still being built (loading its model)."""


def spin_node(create: Callable[[], Node], args: list[str] | None) -> int:
    """Run a node until SIGINT or SIGTERM: both end it with status 0 within about STOP_GRACE_S, as a
    launcher expects, even while it is loading its model or coding a frame. A node that cannot start
    with its parameters says why in one line and returns 2."""
    rclpy.init(args=args, signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    node = None
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()
        if node is None:
            # Building the node (loading weights) can take seconds: stop it where it stands.
            raise _Stopped

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    finished = True
    try:
        node = create()
        executor = rclpy.executors.SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except _Stopped:
        pass
    except (PcicError, ParameterException) as error:
        # A configuration the node cannot run with (a parameter out of range, a model it lacks): one
        # line naming it, and a failing exit status for the launcher, rather than a traceback.
        print(f"[{create.__name__}] cannot start: {error}", file=sys.stderr)
        return 2
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if close is not None:
                finished = close()
            node.destroy_node()
        rclpy.try_shutdown()
    if not finished:
        # The worker thread is still inside torch: leave without waiting for it (interpreter shutdown
        # would), once everything written so far is out.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
