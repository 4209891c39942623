"""Running pcic_ros nodes as separate processes on real rclpy, and a test-side node to feed and watch them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rclpy
from pcic_ros.msg import CodecStatistics, CompressedFrame
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage

from pcic_ros.ros.conversions import ns_to_stamp, points_to_pointcloud2, rgb_to_image
from pcic_ros.ros.messages import stamp_to_ns
from pcic_ros.ros.tf_buffer import transform_from_matrix

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "/pcic_test"
RELIABLE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=20, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
#: Parameters that make the nodes deliver every frame of a short test burst.
LOSSLESS_PARAMETERS = {
    "input_reliability": "reliable",
    "input_depth": 20,
    "output_reliability": "reliable",
    "output_depth": 20,
    "work_queue_size": 20,
    "statistics_period": 0.5,
}


def ros_environment(domain_id: int, log_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ROS_DOMAIN_ID=str(domain_id),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        ROS_LOG_DIR=str(log_dir),
        FASTDDS_DEFAULT_PROFILES_FILE=str(REPO / "config" / "fastdds_shm.xml"),
        PYTHONWARNINGS="ignore::FutureWarning",
    )
    return env


class NodeProcess:
    """One node (``pcic_ros.ros.encoder_node`` or ``pcic_ros.ros.decoder_node``) in its own process."""

    def __init__(
        self,
        module: str,
        parameters: dict[str, object],
        remaps: dict[str, str],
        env: dict[str, str],
        log: Path,
        parameter_files: tuple[Path, ...] = (),
    ) -> None:
        arguments = ["--ros-args", "-r", f"__ns:={NAMESPACE}"]
        for parameter_file in parameter_files:
            arguments += ["--params-file", str(parameter_file)]
        for source, target in remaps.items():
            arguments += ["-r", f"{source}:={target}"]
        for name, value in parameters.items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            arguments += ["-p", f"{name}:={text}"]
        self.log = log
        self._log_file = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *arguments], env=env, stdout=self._log_file, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()
        return self.process.returncode

    def kill(self) -> int:
        """SIGKILL, as a crash or the OOM killer ends a process: the node gets no chance to clean up."""
        self.process.kill()
        self.process.wait()
        self._log_file.close()
        return self.process.returncode

    def resident_bytes(self) -> int:
        """The process's resident set size. Read from /proc because psutil is no declared dependency."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no VmRSS for {self.log.name} (pid {self.process.pid})")


class RosBench:
    """A node in the test process: publishes camera, LiDAR and TF, records what the nodes send."""

    def __init__(self, domain_id: int, compressed_qos: QoSProfile = RELIABLE) -> None:
        """``compressed_qos``: of the subscription to ``compressed``; best effort to hear an encoder that
        publishes best effort, as the shipped configuration does."""
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(REPO / "config" / "fastdds_shm.xml")
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node("pcic_test_bench", namespace=NAMESPACE, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.image_pub = self.node.create_publisher(Image, "image", RELIABLE)
        self.info_pub = self.node.create_publisher(CameraInfo, "camera_info", RELIABLE)
        self.scan_pub = self.node.create_publisher(PointCloud2, "points", RELIABLE)
        self.compressed_pub = self.node.create_publisher(CompressedFrame, "compressed", RELIABLE)
        self.tf_static_pub = self.node.create_publisher(TFMessage, "/tf_static", LATCHED)
        self.decoded: list[Image] = []
        self.compressed: list[CompressedFrame] = []
        self.statistics: dict[str, list[CodecStatistics]] = {}
        self.node.create_subscription(Image, "decoded", self.decoded.append, RELIABLE)
        self.node.create_subscription(CompressedFrame, "compressed", self.compressed.append, compressed_qos)
        self.node.create_subscription(CodecStatistics, "encoder_statistics", self._on_statistics, RELIABLE)
        self.node.create_subscription(CodecStatistics, "decoder_statistics", self._on_statistics, RELIABLE)

    def _on_statistics(self, msg: CodecStatistics) -> None:
        self.statistics.setdefault(msg.node_name, []).append(msg)

    def latest_statistics(self, node_name: str) -> CodecStatistics | None:
        history = self.statistics.get(node_name)
        return history[-1] if history else None

    def spin_until(self, done: Callable[[], bool], timeout_s: float, processes: list[NodeProcess] = ()) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if done():
                return True
            for process in processes:
                if process.process.poll() is not None:
                    raise AssertionError(f"{process.log.name} exited early:\n{process.output()}")
            self.executor.spin_once(timeout_sec=0.05)
        return done()

    def wait_for_subscribers(self, processes: list[NodeProcess], image: int, scan: int, timeout_s: float = 120.0):
        ready = self.spin_until(
            lambda: self.image_pub.get_subscription_count() >= image and self.scan_pub.get_subscription_count() >= scan,
            timeout_s,
            processes,
        )
        assert ready, "the nodes did not subscribe in time:\n" + "\n".join(p.output() for p in processes)

    def publish_static_transform(self, matrix: np.ndarray, parent: str, child: str) -> None:
        self.tf_static_pub.publish(TFMessage(transforms=[transform_from_matrix(matrix, parent, child)]))

    def publish_camera_info(self, projection: np.ndarray, width: int, height: int, frame_id: str) -> None:
        info = CameraInfo(width=width, height=height, distortion_model="plumb_bob")
        info.header.frame_id = frame_id
        info.p = [float(v) for v in np.asarray(projection).reshape(-1)]
        self.info_pub.publish(info)

    def publish_frame(self, rgb: np.ndarray, scan: np.ndarray | None, stamp_ns: int, scan_offset_ns: int = 0) -> None:
        if scan is not None:
            self.scan_pub.publish(points_to_pointcloud2(scan, Header(stamp=ns_to_stamp(stamp_ns + scan_offset_ns),
                                                                     frame_id="velodyne")))  # fmt: skip
        self.image_pub.publish(rgb_to_image(rgb, Header(stamp=ns_to_stamp(stamp_ns), frame_id="camera")))

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


class SensorStream:
    """A live camera and LiDAR on the bench: an image with its CameraInfo every 1/``image_hz`` s and a
    scan with every ``scan_every``-th image, stamped with the wall clock, cycling through ``frames``.

    Ticks lie on a fixed grid; a tick the bench is too late for is skipped, not sent late in a burst,
    as a sensor driver drops what it could not send in time.
    """

    def __init__(
        self,
        bench: RosBench,
        frames: list[tuple[np.ndarray, np.ndarray]],
        projection: np.ndarray,
        image_hz: float,
        scan_every: int,
    ) -> None:
        self.bench = bench
        # Messages built once: converting a full-size image at 30 Hz would cost the bench its rate.
        self._messages = [
            (rgb_to_image(rgb, Header(frame_id="camera")), points_to_pointcloud2(points, Header(frame_id="velodyne")))
            for rgb, points in frames
        ]
        height, width = frames[0][0].shape[:2]
        self._camera_info = CameraInfo(width=width, height=height, distortion_model="plumb_bob")
        self._camera_info.header.frame_id = "camera"
        self._camera_info.p = [float(v) for v in np.asarray(projection).reshape(-1)]
        self.period_ns = round(1e9 / image_hz)
        self.scan_every = scan_every
        self.image_stamps: list[int] = []
        self.scan_stamps: list[int] = []
        self.skipped_ticks = 0

    def _publish(self, tick: int) -> None:
        image, scan = self._messages[tick % len(self._messages)]
        stamp = ns_to_stamp(time.time_ns())
        image.header.stamp = self._camera_info.header.stamp = stamp
        self.bench.image_pub.publish(image)
        self.bench.info_pub.publish(self._camera_info)
        self.image_stamps.append(stamp_to_ns(stamp))
        if tick % self.scan_every == 0:
            scan.header.stamp = stamp
            self.bench.scan_pub.publish(scan)
            self.scan_stamps.append(stamp_to_ns(stamp))

    def run(
        self,
        duration_s: float,
        processes: list[NodeProcess],
        every_second: Callable[[float], None] | None = None,
        until: Callable[[], bool] | None = None,
    ) -> None:
        """Publish for ``duration_s``, or until ``until()`` holds, spinning the bench in between;
        ``every_second`` gets the seconds elapsed, about once a second. Fails as soon as one of
        ``processes`` has exited."""
        start = time.monotonic_ns()
        end = start + int(duration_s * 1e9)
        next_tick, tick, next_second = start, 0, start
        while (now := time.monotonic_ns()) < end and not (until is not None and until()):
            if now >= next_tick:
                self._publish(tick)
                missed = (time.monotonic_ns() - next_tick) // self.period_ns
                self.skipped_ticks += missed
                tick += missed + 1
                next_tick += (missed + 1) * self.period_ns
            if now >= next_second:
                for process in processes:
                    if process.process.poll() is not None:
                        raise AssertionError(f"{process.log.name} exited under load:\n{process.output()}")
                if every_second is not None:
                    every_second((now - start) / 1e9)
                next_second += 1_000_000_000
            self.bench.executor.spin_once(timeout_sec=max(0.0, (next_tick - time.monotonic_ns()) / 1e9))


def start_encoder(
    env: dict[str, str], log: Path, parameters: dict[str, object], parameter_files: tuple[Path, ...] = ()
) -> NodeProcess:
    """An encoder process whose statistics go to 'encoder_statistics'."""
    return NodeProcess(
        "pcic_ros.ros.encoder_node", parameters, {"statistics": "encoder_statistics"}, env, log, parameter_files
    )


def start_decoder(
    env: dict[str, str],
    log: Path,
    parameters: dict[str, object],
    parameter_files: tuple[Path, ...] = (),
    remaps: dict[str, str] | None = None,
) -> NodeProcess:
    """A decoder process whose statistics go to 'decoder_statistics' and its images to 'decoded'."""
    return NodeProcess(
        "pcic_ros.ros.decoder_node",
        parameters,
        {"statistics": "decoder_statistics", "image": "decoded", **(remaps or {})},
        env,
        log,
        parameter_files,
    )


def start_pair(
    env: dict[str, str], log_dir: Path, encoder: dict[str, object], decoder: dict[str, object]
) -> list[NodeProcess]:
    """Encoder and decoder processes; statistics remapped apart and the decoder's output to 'decoded'."""
    return [
        start_encoder(env, log_dir / "encoder.log", {**LOSSLESS_PARAMETERS, **encoder}),
        start_decoder(env, log_dir / "decoder.log", {**LOSSLESS_PARAMETERS, **decoder}),
    ]
