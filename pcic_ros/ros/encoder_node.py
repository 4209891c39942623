"""Vehicle side: camera image + LiDAR scan -> pcic_ros/CompressedFrame, a thin shell over Codec.

Subscribes ``image`` (rectified sensor_msgs/Image), ``camera_info`` and ``points`` (PointCloud2),
pairs image and scan by approximate time, takes T_camera_lidar from /tf_static and /tf (or the
``fixed_extrinsic`` parameter), encodes on a worker thread and publishes ``compressed`` and
``statistics``. An image that finds no usable scan is still sent, coded with the no-scan fallback.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
from rclpy.node import Node
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

from pcic_ros.codec.api import Codec, ScanError, default_device
from pcic_ros.codec.bitstream import FORMAT_VERSION
from pcic_ros.codec.projection import Calibration
from pcic_ros.errors import InvalidArgumentError
from pcic_ros.msg import CodecStatistics, CompressedFrame
from pcic_ros.ros.conversions import ns_to_stamp
from pcic_ros.ros.memory import return_freed_memory
from pcic_ros.ros.messages import (
    CameraInfoError,
    ConversionError,
    ImageEncodingError,
    calibration_fields,
    image_to_rgb,
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
from pcic_ros.ros.rate_control import RateController
from pcic_ros.ros.tf_buffer import TransformError
from pcic_ros.ros.time_sync import ApproximateTimePairer

__all__ = ["EncoderNode", "main"]


@dataclass
class _Job:
    header: Header
    rgb: np.ndarray
    scan: np.ndarray | None
    calibration: Calibration | None
    scan_stamp_ns: int
    scan_frame_id: str


#: The encoder's parameters (config/encoder.yaml sets each).
PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec("model", "hyper-pc-vr", "codec model (pcic_ros.codec.zoo names, e.g. hyper-pc-vr, hyper-vr)"),
    ParameterSpec(
        "quality", 4.0, "highest quality to use: 1..4 for a single-rate model, 0..5 for a variable-rate one", 0, 5
    ),
    ParameterSpec(
        "min_quality", 1.0, "lowest quality rate control may fall back to (a whole number for single-rate)", 0, 5
    ),
    ParameterSpec("device", "", "torch device: cpu, cuda, or empty for cuda when available"),
    ParameterSpec("checkpoint", "", "weights file for model at quality; empty: shipped weights"),
    ParameterSpec("effort", 0, "latent refinement steps per frame (HYPER family); 0: one-pass encoder", 0),
    ParameterSpec(
        "effort_budget",
        0.0,
        "seconds of refinement one frame may take at most; 0: no cap. Frames arriving meanwhile wait in "
        "the work queue, which drops its oldest",
        0,
    ),
    ParameterSpec("sync_queue_size", 10, "messages kept per input by the image/scan pairing", 1),
    ParameterSpec("sync_slop", 0.05, "a paired image and scan differ in stamp by less than this, seconds (as slop)", 0),
    ParameterSpec(
        "scan_timeout", 0.3, "seconds past the slop an image waits for its scan before it is sent without", 0
    ),
    ParameterSpec("fixed_extrinsic", [0.0], "row-major 4x4 T_camera_lidar instead of TF; [0.0] means use TF"),
    ParameterSpec("target_bitrate", 0.0, "bits per second to stay under; 0 disables rate control", 0),
    ParameterSpec("burst_seconds", 1.0, "seconds of target_bitrate that one burst may use", 0.001),
    ParameterSpec("work_queue_size", 2, "images waiting for the encoder; more drop the oldest", 1),
    ParameterSpec("statistics_period", 1.0, "seconds between CodecStatistics messages", 0.01),
    RELEASE_MEMORY,
    ParameterSpec("problem_log_period", 10.0, "seconds between log lines about one input problem", 0),
    *qos_parameters("input", "best_effort", 5, "the camera and LiDAR subscriptions"),
    *qos_parameters("output", "best_effort", 5, "the compressed frame publisher"),
)


class EncoderNode(Node):
    def __init__(self) -> None:
        super().__init__("pcic_encoder")
        p = declare_parameters(self, PARAMETERS, "EncoderParameters")
        if p.min_quality > p.quality:
            raise InvalidArgumentError(f"parameter min_quality ({p.min_quality:g}) exceeds quality ({p.quality:g})")
        self._effort_budget_s = p.effort_budget
        self._scan_timeout_s = p.scan_timeout
        self._release_memory = p.release_memory
        input_qos = qos_profile(p.input_reliability, p.input_depth)
        output_qos = qos_profile(p.output_reliability, p.output_depth)

        device = p.device or default_device()
        self._codec = Codec(p.model, p.quality, device=device, checkpoint=p.checkpoint or None)
        self._model = p.model
        # A bad effort or quality range stops the node at start, not every frame.
        self._effort = self._codec.check_effort(p.effort)
        continuous = self._codec.variable_rate
        self._rate = RateController(p.min_quality, p.quality, p.target_bitrate, p.burst_seconds, continuous=continuous)
        self._codec.at_quality(p.min_quality)
        if not self._codec.variable_rate:
            # Every step of the ladder loads its own network: now, not when a frame first needs it.
            for quality in range(int(p.min_quality), int(p.quality)):
                self._codec.at_quality(quality)
        self._pairer: ApproximateTimePairer[Image, PointCloud2] = ApproximateTimePairer(
            p.sync_queue_size, int(p.sync_slop * 1e9)
        )
        self._calibration = CalibrationSource(self, [] if list(p.fixed_extrinsic) == [0.0] else list(p.fixed_extrinsic))
        self._problems = ProblemReporter(self, p.problem_log_period)
        self._stats = StatisticsCollector(target_bits_per_second=p.target_bitrate, current_quality=p.quality)
        self._stats_period = p.statistics_period
        self._lock = threading.Lock()
        # Pairs whose calibration (CameraInfo, TF) is not there yet: callbacks of different topics run in
        # no fixed order, so the first scan can beat the first CameraInfo or /tf_static. Such a pair waits
        # up to scan_timeout (from when it was first tried) before it is sent without the scan.
        self._awaiting_calibration: list[tuple[int, Image, PointCloud2]] = []
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=p.work_queue_size)

        self._publisher = self.create_publisher(CompressedFrame, "compressed", output_qos)
        self._stats_publisher = self.create_publisher(CodecStatistics, "statistics", QoSProfile(depth=10))
        self.create_subscription(Image, "image", self._on_image, input_qos)
        self.create_subscription(PointCloud2, "points", self._on_scan, input_qos)
        self.create_subscription(CameraInfo, "camera_info", self._calibration.set_camera_info, input_qos)
        self.create_timer(0.05, self._expire_images)
        self.create_timer(self._stats_period, self._publish_statistics)
        self._worker = threading.Thread(target=self._work, name="pcic_encoder_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(f"encoding with {p.model} q{p.min_quality:g}..q{p.quality:g} on {device}")

    # --- pairing (executor thread) -------------------------------------------------------------------

    def _now_ns(self) -> int:
        return time.monotonic_ns()

    def _on_image(self, msg: Image) -> None:
        self._stats.frames_in += 1
        with self._lock:
            pair = self._pairer.add_image(stamp_to_ns(msg.header.stamp), msg, self._now_ns())
            evicted, self._pairer.evicted_images = self._pairer.evicted_images, []
        self._stats.frames_dropped_queue += len(evicted)
        if pair is not None:
            self._prepare(pair.image, pair.scan)

    def _on_scan(self, msg: PointCloud2) -> None:
        with self._lock:
            pair = self._pairer.add_scan(stamp_to_ns(msg.header.stamp), msg, self._now_ns())
        if pair is not None:
            self._prepare(pair.image, pair.scan)

    def _expire_images(self) -> None:
        with self._lock:
            expired = self._pairer.expire(self._now_ns(), int(self._scan_timeout_s * 1e9))
            waiting, self._awaiting_calibration = self._awaiting_calibration, []
        for _, image in expired:
            self._problems.report("scan_timeout", "no LiDAR scan paired with the image in time: sending it without")
            self._prepare(image, None)
        for first_try_ns, image, scan in waiting:
            self._prepare(image, scan, first_try_ns)

    def _prepare(self, image: Image, scan: PointCloud2 | None, first_try_ns: int | None = None) -> None:
        """Convert the inputs and queue the frame; a scan that cannot be used means the no-scan fallback.
        A pair whose calibration is missing is held back (``_awaiting_calibration``) until scan_timeout."""
        try:
            rgb = image_to_rgb(image)
        except ImageEncodingError as error:
            self._problems.report("bad_encoding", f"image dropped: {error}")
            return
        except ConversionError as error:
            self._problems.report("bad_encoding", f"image dropped, malformed: {error}")
            return
        points, calibration = None, None
        if scan is not None:
            now = self._now_ns()
            first_try_ns = now if first_try_ns is None else first_try_ns
            may_wait = now - first_try_ns < int(self._scan_timeout_s * 1e9)
            inputs = self._scan_inputs(image, scan, rgb.shape[1], rgb.shape[0], may_wait)
            if inputs is None:
                with self._lock:
                    self._awaiting_calibration.append((first_try_ns, image, scan))
                return
            points, calibration = inputs
        used = points is not None
        job = _Job(
            image.header,
            rgb,
            points,
            calibration,
            stamp_to_ns(scan.header.stamp) if used else 0,
            scan.header.frame_id if used else "",
        )
        if put_newest(self._jobs, job):
            self._stats.frames_dropped_queue += 1

    def _scan_inputs(
        self, image: Image, scan: PointCloud2, width: int, height: int, may_wait: bool
    ) -> tuple[np.ndarray | None, Calibration | None] | None:
        """Points and calibration for the frame, (None, None) for the no-scan fallback, or None when the
        calibration is missing and ``may_wait``: the caller retries later. The calibration is looked up
        first so that a retried pair reports each problem of its scan once."""
        try:
            calibration = self._calibration.calibration(
                image.header.frame_id, scan.header.frame_id, stamp_to_ns(scan.header.stamp), width, height
            )
        except CameraInfoError as error:
            if may_wait:
                return None
            self._problems.report("camera_info_mismatch", f"sending without the scan: {error}")
            return None, None
        except TransformError as error:
            if may_wait:
                return None
            self._problems.report("tf_missing", f"sending without the scan: {error}")
            return None, None
        try:
            points = pointcloud2_to_points(scan)
        except ConversionError as error:
            self._problems.report("empty_scan", f"unreadable scan, sending without: {error}")
            return None, None
        total = int(scan.width) * int(scan.height)
        if total == 0:
            self._problems.report("empty_scan", "empty scan: sending the image without")
            return None, None
        if len(points) < total:
            self._problems.report("nan_scan", f"scan has {total - len(points)} of {total} points non-finite")
            if len(points) == 0:
                return None, None
        return points, calibration

    # --- encoding (worker thread) --------------------------------------------------------------------

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                self._encode(job)
            except Exception as error:  # A frame that fails to encode must not stop the worker.
                self._stats.frames_failed += 1
                self.get_logger().error(f"encoding failed: {error}", throttle_duration_sec=10.0)
            if self._release_memory:
                # Between frames: what encoding freed goes back to the kernel instead of staying resident.
                return_freed_memory()

    def _encode(self, job: _Job) -> None:
        scan, calibration = job.scan, job.calibration
        height, width = job.rgb.shape[:2]
        # The budget runs on the images' stamps: the stream's own clock, the same live or from a bag.
        stream_s = stamp_to_ns(job.header.stamp) / 1e9
        # One refinement budget per frame, shared by the qualities rate control tries.
        deadline = time.monotonic() + self._effort_budget_s if self._effort_budget_s > 0 else None
        refine = {"effort": self._effort, "deadline": deadline}
        quality = self._rate.choose(stream_s)
        while quality is not None:
            codec = self._codec.at_quality(quality)
            started = time.perf_counter()
            try:
                frame = codec.encode_frame(job.rgb, scan, calibration, reconstruct=False, **refine)
            except ScanError as error:
                self._problems.report("no_points_in_view", f"sending without the scan: {error}")
                scan = calibration = None
                frame = codec.encode_frame(job.rgb, None, None, reconstruct=False, **refine)
            elapsed_ms = 1000.0 * (time.perf_counter() - started)
            self._rate.observe(quality, 8 * len(frame.data))
            if not self._rate.try_send(8 * len(frame.data), stream_s):
                quality = self._rate.choose(stream_s, below=quality)
                continue
            msg = CompressedFrame(
                header=job.header,
                zeros_fallback=frame.header.zeros_fallback,
                codec=self._model,
                format_version=FORMAT_VERSION,
                quality=float(codec.quality),
                width=width,
                height=height,
                data=frame.data,
            )
            if scan is not None:
                msg.scan_stamp = ns_to_stamp(job.scan_stamp_ns)
                msg.scan_frame_id = job.scan_frame_id
                msg.projection, msg.camera_from_lidar = calibration_fields(calibration)
            self._publisher.publish(msg)
            self._stats.frames_out += 1
            self._stats.frames_zeros_fallback += int(frame.header.zeros_fallback)
            self._stats.current_quality = float(codec.quality)
            self._stats.record_frame(len(frame.data), width * height, elapsed_ms)
            return
        self._stats.frames_dropped_budget += 1

    def _publish_statistics(self) -> None:
        msg = self._stats.message(self, self._problems.counts, self._jobs.qsize(), self._stats_period, encoder=True)
        self._stats_publisher.publish(msg)

    def close(self) -> bool:
        """Stop the worker after the frame it is encoding; False when it is still busy (see stop_worker)."""
        return stop_worker(self._jobs, self._worker)


def main(args: list[str] | None = None) -> int:
    return spin_node(EncoderNode, sys.argv if args is None else args)


if __name__ == "__main__":
    sys.exit(main())
