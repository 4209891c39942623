"""End-to-end latency and throughput of the ROS pipeline: camera stamp to decoded image, on one machine.

The encoder and decoder nodes (``pcic_ros.ros.encoder_node``, ``pcic_ros.ros.decoder_node``) run in their own
processes, started as the ROS tests start them (``test/ros_harness.py``), on ROS_DOMAIN_ID 90 with
ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and the project's Fast DDS profile (shared memory, UDP
loopback). A feeder node publishes a KITTI raw drive (Image, CameraInfo, PointCloud2 and the static
LiDAR-to-camera TF) stamped with the time of publishing, as a camera driver stamps its frames, and
records when each decoded image arrives. The nodes use the tests' lossless parameters (reliable QoS,
queues deep enough for every frame), so no frame is dropped and any queueing shows as latency.

Two modes, after one untimed frame that pays the nodes' one-time costs:
  one at a time: the next frame is published when the previous one has come back decoded, so the
    latency has no queueing in it;
  stream: frames published at --rate Hz like a camera; latency then includes queueing, and the frame
    rate is what the pipeline sustains (decoded frames per second, first to last decoded image).
Nothing is asserted; the numbers depend on the machine and its load.

    .venv/bin/python bench/bench_ros_pipeline.py [--frames 4] [--model hyper-pc] [--quality 4] [--rate 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_anchors import DEFAULT_DATA_DIR
from sensor_msgs.msg import Image
from tqdm import tqdm

from pcic_ros.experiments.datasets import discover_frames
from pcic_ros.ros.messages import stamp_to_ns

# The feeder and the node processes are the ROS tests' own harness, so the bench runs what they check.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))
from ros_harness import RELIABLE, NodeProcess, RosBench, ros_environment, start_pair  # noqa: E402

DOMAIN_ID = 90
NODE_START_TIMEOUT_S = 300.0


class Feeder:
    """The harness's feeder node, plus the wall time at which each decoded image arrived, by its stamp."""

    def __init__(self, processes: list[NodeProcess], timeout_s: float) -> None:
        self.bench = RosBench(DOMAIN_ID)
        self.processes = processes
        self.timeout_s = timeout_s
        self.arrivals: dict[int, int] = {}
        self.bench.node.create_subscription(Image, "decoded", self._on_decoded, RELIABLE)

    def _on_decoded(self, message: Image) -> None:
        self.arrivals.setdefault(stamp_to_ns(message.header.stamp), time.time_ns())

    def publish(self, rgb: np.ndarray, scan: np.ndarray, projection: np.ndarray) -> int:
        """Publish one frame stamped now; returns the stamp."""
        stamp = time.time_ns()
        self.bench.publish_camera_info(projection, rgb.shape[1], rgb.shape[0], "camera")
        self.bench.publish_frame(rgb, scan, stamp)
        return stamp

    def wait_decoded(self, stamps: list[int]) -> None:
        """Spin until every stamp has come back decoded; the nodes' logs when they do not in time."""
        timeout = self.timeout_s * len(stamps)
        if not self.bench.spin_until(lambda: all(s in self.arrivals for s in stamps), timeout, self.processes):
            logs = "\n".join(f"--- {p.log.name}\n{p.output()}" for p in self.processes)
            raise RuntimeError(f"{len(stamps)} frames not all decoded within {timeout:.0f} s\n{logs}")

    def spin_until_time(self, deadline: float) -> None:
        self.bench.spin_until(lambda: time.monotonic() >= deadline, deadline - time.monotonic() + 1.0, self.processes)

    def close(self) -> None:
        self.bench.close()


def kitti_drive(data_dir: Path, count: int) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """(P_rect, T from LiDAR to the rectified camera, [(rgb, scan)] of `count` + 1 consecutive frames)."""
    # The left colour camera of the longest KITTI raw drive: the one stream a vehicle's camera would send.
    drives: dict[str, list] = {}
    for frame in discover_frames(data_dir):
        if frame.layout == "kitti_raw" and frame.camera == 2:
            drives.setdefault(frame.sequence, []).append(frame)
    drive = max(drives.values(), key=len, default=[])
    if len(drive) < count + 1:
        raise ValueError(f"need a KITTI raw drive of at least {count + 1} frames below {data_dir}")
    calibration = drive[0].calibration()
    # The image is rectified, so the camera frame the CameraInfo's P projects from is the rectified one.
    lidar_to_camera = calibration.rectification @ calibration.lidar_to_camera
    return calibration.projection, lidar_to_camera, [(f.image(), f.scan()) for f in drive[: count + 1]]


def _latency_line(mode: str, latencies_ms: list[float], frames_per_s: float) -> str:
    return (
        f"  {mode:<16}{len(latencies_ms):>7}{statistics.median(latencies_ms):>10.0f}"
        f"{min(latencies_ms):>10.0f}{max(latencies_ms):>10.0f}{frames_per_s:>10.2f}"
    )


def run_pipeline_bench(
    data_dir: Path,
    frame_count: int,
    model: str,
    quality: int,
    device: str,
    rate_hz: float = 10.0,
    timeout_s: float = 300.0,
    threads: int | None = None,
) -> None:
    """Start both nodes, run both modes with `frame_count` frames each and print one line per mode.
    ``threads``: CPU threads of each node's torch (OMP_NUM_THREADS), or None for torch's choice."""
    projection, lidar_to_camera, frames = kitti_drive(data_dir, frame_count)
    warm_up, frames = frames[0], frames[1:]
    height, width = warm_up[0].shape[:2]
    print(
        f"ROS pipeline: {model} q{quality} on {device}, KITTI raw {width} x {height}, encoder and decoder nodes "
        f"in their own processes ({threads or 'default'} torch threads each), domain {DOMAIN_ID}, localhost only"
    )
    with tempfile.TemporaryDirectory(prefix="pcic_ros_bench_") as run_dir:
        env = ros_environment(DOMAIN_ID, Path(run_dir) / "ros_log")
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        started = time.monotonic()
        encoder = {"model": model, "quality": quality, "min_quality": quality, "device": device}
        processes = start_pair(env, Path(run_dir), encoder, {"device": device})
        feeder = Feeder(processes, timeout_s)
        try:
            feeder.bench.wait_for_subscribers(processes, image=1, scan=2, timeout_s=NODE_START_TIMEOUT_S)
            print(f"  nodes subscribed {time.monotonic() - started:.1f} s after start")
            feeder.bench.publish_static_transform(lidar_to_camera, "camera", "velodyne")
            feeder.wait_decoded([feeder.publish(*warm_up, projection)])

            one_at_a_time = []
            began = time.time_ns()
            for rgb, scan in tqdm(frames, desc="ROS one at a time", file=sys.stderr, leave=False):
                stamp = feeder.publish(rgb, scan, projection)
                feeder.wait_decoded([stamp])
                one_at_a_time.append(feeder.arrivals[stamp] - stamp)
            sequential_fps = len(frames) / ((time.time_ns() - began) / 1e9)

            stamps = []
            next_publish = time.monotonic()
            for rgb, scan in tqdm(frames, desc=f"ROS stream {rate_hz:g} Hz", file=sys.stderr, leave=False):
                feeder.spin_until_time(next_publish)
                stamps.append(feeder.publish(rgb, scan, projection))
                next_publish += 1.0 / rate_hz
            feeder.wait_decoded(stamps)
        finally:
            feeder.close()
            for process in processes:
                process.stop()
    stream = [feeder.arrivals[stamp] - stamp for stamp in stamps]
    arrived = sorted(feeder.arrivals[stamp] for stamp in stamps)
    stream_fps = (len(arrived) - 1) / ((arrived[-1] - arrived[0]) / 1e9) if len(arrived) > 1 else float("nan")
    print(f"  {'mode':<16}{'frames':>7}{'median ms':>10}{'min ms':>10}{'max ms':>10}{'frames/s':>10}")
    print(_latency_line("one at a time", [ns / 1e6 for ns in one_at_a_time], sequential_fps))
    print(_latency_line(f"stream {rate_hz:g} Hz", [ns / 1e6 for ns in stream], stream_fps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR / "kitti_raw")
    parser.add_argument("--frames", type=int, default=4, help="timed frames per mode")
    parser.add_argument("--model", default="hyper-pc")
    parser.add_argument("--quality", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rate", type=float, default=10.0, help="publishing rate of the stream mode, Hz")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per frame before giving up")
    parser.add_argument("--threads", type=int, help="torch CPU threads of each node (default: torch's choice)")
    args = parser.parse_args()
    run_pipeline_bench(
        args.data_dir, args.frames, args.model, args.quality, args.device, args.rate, args.timeout, args.threads
    )


if __name__ == "__main__":
    main()
