"""Base station side: pcic_ros/CompressedFrame + the same LiDAR scan -> sensor_msgs/Image (rgb8).

Subscribes ``compressed``, ``points`` and ``camera_info``; a frame is decoded against the scan whose
stamp and frame id are exactly the ones the frame names (never a nearby one), or without a scan when
the frame names none (the no-scan fallback, or a model that does not use the scan). A frame whose
scan does not arrive within ``scan_timeout`` is reported and dropped. Publishes ``image`` with the
original image header, and ``statistics``.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from pcic_ros.codec.api import Codec, default_device
from pcic_ros.codec.bitstream import MAX_PIXELS, BitstreamError, ScanMismatchError, read_header
from pcic_ros.codec.projection import Calibration, CalibrationError
from pcic_ros.msg import CodecStatistics, CompressedFrame
from pcic_ros.ros.conversions import rgb_to_image
from pcic_ros.ros.memory import return_freed_memory
from pcic_ros.ros.messages import (
    CameraInfoError,
    ConversionError,
    carried_calibration,
    pointcloud2_to_points,
    stamp_to_ns,
)
from pcic_ros.ros.node_support import (
    CalibrationSource,
    ProblemReporter,
    StatisticsCollector,
    put_newest,
    spin_node,
    stop_worker,
)
from pcic_ros.ros.parameters import RELEASE_MEMORY, ParameterSpec, declare_parameters, qos_parameters, qos_profile
from pcic_ros.ros.tf_buffer import TransformError

__all__ = ["DecoderNode", "main"]


@dataclass
class _Waiting:
    frame: CompressedFrame
    arrival_s: float
    reason: str = "scan_timeout"


#: The decoder's parameters (config/decoder.yaml sets each).
PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("device", "", "torch device: cpu, cuda, or empty for cuda when available"),
    ParameterSpec("scan_timeout", 2.0, "seconds a frame waits for its scan (and calibration) before it is dropped", 0),
    ParameterSpec("scan_cache_size", 50, "scans kept for frames that arrive later", 1),
    ParameterSpec("fixed_extrinsic", [0.0], "row-major 4x4 T_camera_lidar instead of TF; [0.0] means use TF"),
    ParameterSpec("work_queue_size", 4, "frames waiting for the decoder; more drop the oldest", 1),
    ParameterSpec(
        "max_image_pixels",
        MAX_PIXELS,
        "frames whose header asks for more pixels are dropped undecoded (decoding costs what the header "
        "asks for); set to the cameras' size",
        1,
    ),
    ParameterSpec("statistics_period", 1.0, "seconds between CodecStatistics messages", 0.01),
    RELEASE_MEMORY,
    ParameterSpec("problem_log_period", 10.0, "seconds between log lines about one input problem", 0),
    *qos_parameters("input", "best_effort", 5, "the compressed frame and scan subscriptions"),
    *qos_parameters("output", "reliable", 5, "the decoded image publisher"),
)


class DecoderNode(Node):
    def __init__(self) -> None:
        super().__init__("pcic_decoder")
        p = declare_parameters(self, PARAMETERS, "DecoderParameters")
        self._scan_timeout_s = p.scan_timeout
        self._scan_cache_size = p.scan_cache_size
        self._max_image_pixels = p.max_image_pixels
        self._release_memory = p.release_memory
        input_qos = qos_profile(p.input_reliability, p.input_depth)
        output_qos = qos_profile(p.output_reliability, p.output_depth)

        self._device = p.device or default_device()
        # Made for the first frame; Codec.decode follows each frame's header, and keeps the weights of
        # every model and quality it has decoded (one network for all of a variable-rate model's).
        self._codec: Codec | None = None
        self._calibration = CalibrationSource(self, [] if list(p.fixed_extrinsic) == [0.0] else list(p.fixed_extrinsic))
        self._problems = ProblemReporter(self, p.problem_log_period)
        self._stats = StatisticsCollector()
        self._stats_period = p.statistics_period
        self._scans: OrderedDict[tuple[int, str], PointCloud2] = OrderedDict()
        self._waiting: list[_Waiting] = []
        self._jobs: queue.Queue[tuple[CompressedFrame, np.ndarray | None, Calibration | None] | None] = queue.Queue(
            maxsize=p.work_queue_size
        )

        self._publisher = self.create_publisher(Image, "image", output_qos)
        self._stats_publisher = self.create_publisher(CodecStatistics, "statistics", QoSProfile(depth=10))
        self.create_subscription(CompressedFrame, "compressed", self._on_frame, input_qos)
        self.create_subscription(PointCloud2, "points", self._on_scan, input_qos)
        self.create_subscription(CameraInfo, "camera_info", self._calibration.set_camera_info, input_qos)
        self.create_timer(0.05, self._retry_waiting)
        self.create_timer(self._stats_period, self._publish_statistics)
        self._worker = threading.Thread(target=self._work, name="pcic_decoder_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(f"decoding on {self._device}")

    # --- matching (executor thread) ------------------------------------------------------------------

    def _on_frame(self, frame: CompressedFrame) -> None:
        self._stats.frames_in += 1
        try:
            header = read_header(bytes(frame.data))
        except BitstreamError as error:
            self._problems.report("corrupt_message", f"frame dropped: {error}")
            return
        if header.height * header.width > self._max_image_pixels:
            self._problems.report(
                "corrupt_message",
                f"frame dropped: {header.width} x {header.height} exceeds max_image_pixels ({self._max_image_pixels})",
            )
            return
        if not self._try_queue(_Waiting(frame, time.monotonic())):
            self._waiting.append(_Waiting(frame, time.monotonic()))

    def _on_scan(self, scan: PointCloud2) -> None:
        self._scans[(stamp_to_ns(scan.header.stamp), scan.header.frame_id)] = scan
        while len(self._scans) > self._scan_cache_size:
            self._scans.popitem(last=False)
        self._retry_waiting()

    def _try_queue(self, waiting: _Waiting) -> bool:
        """Queue the frame for decoding if what it needs is here; False when it must wait."""
        frame = waiting.frame
        points, calibration = None, None
        # A frame that names no scan was coded without one: a model that ignores the scan (hyper) sends
        # such frames without zeros_fallback, and waiting for a scan stamped 0 would drop every one of them.
        if not frame.zeros_fallback and frame.scan_frame_id:
            scan = self._scans.get((stamp_to_ns(frame.scan_stamp), frame.scan_frame_id))
            if scan is None:
                waiting.reason = "scan_timeout"
                return False
            try:
                carried = carried_calibration(frame)
            except CalibrationError as error:
                self._problems.report("corrupt_message", f"frame dropped, its calibration is unusable: {error}")
                return True
            try:
                points = pointcloud2_to_points(scan)
                # The frame's own calibration when it carries one (the encoder's exact numbers); a frame
                # of an older encoder is projected with this side's CameraInfo and TF.
                calibration = carried or self._calibration.calibration(
                    frame.header.frame_id, frame.scan_frame_id, stamp_to_ns(frame.scan_stamp), frame.width, frame.height
                )
            except (TransformError, CameraInfoError) as error:
                waiting.reason = "tf_missing" if isinstance(error, TransformError) else "camera_info_mismatch"
                return False
            except ConversionError as error:
                self._problems.report("empty_scan", f"frame dropped, its scan is unreadable: {error}")
                return True
        if put_newest(self._jobs, (frame, points, calibration)):
            self._stats.frames_dropped_queue += 1
        return True

    def _retry_waiting(self) -> None:
        now = time.monotonic()
        still = []
        for waiting in self._waiting:
            if self._try_queue(waiting):
                continue
            if now - waiting.arrival_s > self._scan_timeout_s:
                stamp = stamp_to_ns(waiting.frame.header.stamp)
                self._problems.report(waiting.reason, f"frame of {stamp} ns dropped: its {waiting.reason} lasted")
            else:
                still.append(waiting)
        self._waiting = still

    # --- decoding (worker thread) --------------------------------------------------------------------

    def _codec_for(self, model: str, quality: float) -> Codec:
        if self._codec is None:
            try:
                self._codec = Codec(model, quality, device=self._device, max_decode_pixels=self._max_image_pixels)
            except (KeyError, ValueError) as error:  # a header naming a model or quality this side lacks
                raise BitstreamError(f"cannot decode model '{model}' q{quality}: {error}") from None
        return self._codec

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._decode(*job)
            if self._release_memory:
                # Between frames: what decoding freed goes back to the kernel instead of staying resident.
                return_freed_memory()

    def _decode(self, frame: CompressedFrame, points: np.ndarray | None, calibration: Calibration | None) -> None:
        data = bytes(frame.data)
        started = time.perf_counter()
        try:
            header = read_header(data)
            rgb = self._codec_for(header.model, header.quality).decode(data, points, calibration)
        except ScanMismatchError as error:
            self._stats.frames_failed += 1
            self._problems.report("corrupt_message", f"frame dropped, not decodable with its scan: {error}")
            return
        except (BitstreamError, ValueError) as error:
            self._problems.report("corrupt_message", f"frame dropped: {error}")
            return
        elapsed_ms = 1000.0 * (time.perf_counter() - started)
        self._publisher.publish(rgb_to_image(rgb, frame.header))
        self._stats.frames_out += 1
        self._stats.frames_zeros_fallback += int(header.zeros_fallback)
        self._stats.current_quality = float(header.quality)
        self._stats.record_frame(len(data), header.width * header.height, elapsed_ms)

    def _publish_statistics(self) -> None:
        msg = self._stats.message(self, self._problems.counts, self._jobs.qsize(), self._stats_period, encoder=False)
        self._stats_publisher.publish(msg)

    def close(self) -> bool:
        """Stop the worker after the frame it is decoding; False when it is still busy (see stop_worker)."""
        return stop_worker(self._jobs, self._worker)


def main(args: list[str] | None = None) -> int:
    return spin_node(DecoderNode, sys.argv if args is None else args)


if __name__ == "__main__":
    sys.exit(main())
