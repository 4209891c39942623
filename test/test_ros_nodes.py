"""Encoder and decoder nodes in separate processes on real rclpy, fed real KITTI frames."""

import math
import signal
import time

import numpy as np
import pytest
import yaml
from conftest import DATA, REPO
from ros_harness import LOSSLESS_PARAMETERS, RosBench, ros_environment, start_decoder, start_encoder, start_pair

from pcic_ros.codec.api import Codec
from pcic_ros.codec.projection import Calibration
from pcic_ros.experiments.datasets import load_image, load_scan
from pcic_ros.experiments.metrics import psnr
from pcic_ros.ros.messages import stamp_to_ns
from pcic_ros.ros.tf_buffer import TransformBuffer, transform_from_matrix

pytestmark = pytest.mark.slow

DRIVE = DATA / "kitti_raw" / "2011_09_26" / "2011_09_26_drive_sfnd_sync"
FRAME_PERIOD_NS = 100_000_000
START_NS = 1_317_000_000_000_000_000


def kitti_frames(count: int):
    calibration = Calibration.from_kitti_raw(DATA / "kitti_raw" / "2011_09_26")
    # The camera frame is the rectified one, which P_rect_02 projects from; CameraInfo R is then identity.
    lidar_to_camera = calibration.rectification @ calibration.lidar_to_camera
    frames = [
        (
            load_image(DRIVE / "image_02" / "data" / f"{index:010d}.png"),
            load_scan(DRIVE / "velodyne_points" / "data" / f"{index:010d}.bin"),
        )
        for index in range(count)
    ]
    return calibration.projection, lidar_to_camera, frames


def offline_calibration(projection, lidar_to_camera) -> Calibration:
    """What the nodes compute from CameraInfo and the static transform message."""
    buffer = TransformBuffer()
    buffer.add(transform_from_matrix(lidar_to_camera, "camera", "velodyne"), static=True)
    return Calibration.from_matrices(projection, buffer.lookup("camera", "velodyne", 0))


def stream_and_decode(domain_id: int, processes, projection, lidar_to_camera, frames, scan_offset_ns: int = 0):
    """Publish the static transform, then each frame with its CameraInfo at 10 Hz stamps, until every
    frame arrives decoded and the decoder's statistics count it; then stop the nodes. Returns the
    bench (what it received) and the decoded Image messages by stamp."""
    height, width = frames[0][0].shape[:2]
    bench = RosBench(domain_id)
    try:
        bench.wait_for_subscribers(processes, image=1, scan=2)
        bench.publish_static_transform(lidar_to_camera, "camera", "velodyne")
        for index, (rgb, scan) in enumerate(frames):
            bench.publish_camera_info(projection, width, height, "camera")
            bench.publish_frame(rgb, scan, START_NS + index * FRAME_PERIOD_NS, scan_offset_ns=scan_offset_ns)
        delivered = bench.spin_until(lambda: len(bench.decoded) == len(frames), 180, processes)
        assert delivered, [process.output() for process in processes]

        def counted() -> bool:
            stats = bench.latest_statistics("/pcic_test/pcic_decoder")
            return stats is not None and stats.frames_out == len(frames)

        assert bench.spin_until(counted, 10)
    finally:
        bench.close()
        for process in processes:
            process.stop()
    return bench, {stamp_to_ns(image.header.stamp): image for image in bench.decoded}


def test_every_frame_arrives_decoded_as_the_offline_codec_gives_it(tmp_path):
    projection, lidar_to_camera, frames = kitti_frames(3)
    height, width = frames[0][0].shape[:2]
    env = ros_environment(62, tmp_path / "ros_log")
    processes = start_pair(env, tmp_path, {"model": "hyper-pc", "quality": 1, "device": "cpu"}, {"device": "cpu"})
    # LiDAR and camera stamps differ by a few ms, as with real drivers.
    bench, by_stamp = stream_and_decode(62, processes, projection, lidar_to_camera, frames, scan_offset_ns=3_000_000)
    calibration = offline_calibration(projection, lidar_to_camera)
    codec = Codec("hyper-pc", 1, device="cpu")
    for index, (rgb, scan) in enumerate(frames):
        decoded_msg = by_stamp[START_NS + index * FRAME_PERIOD_NS]
        assert decoded_msg.header.frame_id == "camera" and decoded_msg.encoding == "rgb8"
        decoded = np.frombuffer(bytes(decoded_msg.data), np.uint8).reshape(height, width, 3)
        offline = codec.encode_frame(rgb, scan, calibration)
        assert not offline.header.zeros_fallback
        np.testing.assert_array_equal(decoded, offline.reconstruction)
        print(f"frame {index}: {len(offline.data)} bytes, PSNR {psnr(rgb, decoded):.2f} dB")
    compressed = sorted(bench.compressed, key=lambda m: stamp_to_ns(m.header.stamp))
    assert [m.zeros_fallback for m in compressed] == [False] * 3
    assert [stamp_to_ns(m.scan_stamp) - stamp_to_ns(m.header.stamp) for m in compressed] == [3_000_000] * 3
    # The recorded compressed stream is what the offline codec produces, and decodes to the same images.
    for message, (rgb, scan) in zip(compressed, frames, strict=True):
        assert bytes(message.data) == codec.encode(rgb, scan, calibration)
        decoded = codec.decode(bytes(message.data), scan, calibration)
        received = by_stamp[stamp_to_ns(message.header.stamp)]
        np.testing.assert_array_equal(decoded, np.frombuffer(bytes(received.data), np.uint8).reshape(decoded.shape))
    encoder_stats = bench.latest_statistics("/pcic_test/pcic_encoder")
    assert encoder_stats is not None and encoder_stats.frames_in == 3


def test_a_base_station_without_tf_or_camera_info_decodes_every_frame(tmp_path):
    """The decoder's CameraInfo and TF topics lead nowhere: each frame's own calibration projects its
    scan, and HYPER-PC decodes every frame to what the offline codec gives."""
    projection, lidar_to_camera, frames = kitti_frames(2)
    height, width = frames[0][0].shape[:2]
    env = ros_environment(69, tmp_path / "ros_log")
    encoder = start_encoder(env, tmp_path / "encoder.log", {**LOSSLESS_PARAMETERS, "model": "hyper-pc", "quality": 1})
    nowhere = {"camera_info": "no_camera_info", "/tf_static": "/no_tf_static", "/tf": "/no_tf"}
    decoder = start_decoder(env, tmp_path / "decoder.log", {**LOSSLESS_PARAMETERS, "device": "cpu"}, remaps=nowhere)
    processes = [encoder, decoder]
    bench, by_stamp = stream_and_decode(69, processes, projection, lidar_to_camera, frames)
    calibration = offline_calibration(projection, lidar_to_camera)
    codec = Codec("hyper-pc", 1, device="cpu")
    for index, (rgb, scan) in enumerate(frames):
        decoded = np.frombuffer(bytes(by_stamp[START_NS + index * FRAME_PERIOD_NS].data), np.uint8)
        np.testing.assert_array_equal(
            decoded.reshape(height, width, 3), codec.encode_frame(rgb, scan, calibration).reconstruction
        )
    assert all(not m.zeros_fallback and any(m.projection) for m in bench.compressed)


def test_every_float_parameter_takes_an_integer(tmp_path):
    """`ros2 launch pcic_ros vehicle.launch.xml target_bitrate:=2000000` passes an integer: each node
    starts and reports with every float parameter of its shipped configuration given as one."""
    parameters = {}
    for executable in ("encoder", "decoder"):
        shipped = yaml.safe_load((REPO / "config" / f"{executable}.yaml").read_text())["/**"]["ros__parameters"]
        floats = {name: math.ceil(value) for name, value in shipped.items() if isinstance(value, float)}
        assert floats and all(isinstance(value, int) for value in floats.values())
        parameters[executable] = {**floats, "device": "cpu"}
    env = ros_environment(67, tmp_path / "ros_log")
    processes = start_pair(env, tmp_path, {**parameters["encoder"], "model": "hyper"}, parameters["decoder"])
    bench = RosBench(67)
    try:
        nodes = ("/pcic_test/pcic_encoder", "/pcic_test/pcic_decoder")
        started = bench.spin_until(lambda: all(bench.latest_statistics(node) for node in nodes), 120, processes)
        assert started, [process.output() for process in processes]
        # What `ros2 param describe` shows: the ranges of the parameter table.
        described = describe(bench, nodes[0], ["quality", "burst_seconds", "sync_queue_size", "output_reliability"])
        assert [(r.from_value, r.to_value) for r in described[0].floating_point_range] == [(0.0, 5.0)]
        assert [r.from_value for r in described[1].floating_point_range] == [0.001]
        assert [(r.from_value, r.step) for r in described[2].integer_range] == [(1, 0)]
        assert "best_effort, reliable" in described[3].description
    finally:
        bench.close()
        codes = [process.stop() for process in processes]
    assert codes == [0, 0], [process.output() for process in processes]


def describe(bench: RosBench, node: str, names: list[str]) -> list:
    """The descriptors of a running node's parameters, through its describe_parameters service."""
    from rcl_interfaces.srv import DescribeParameters

    client = bench.node.create_client(DescribeParameters, f"{node}/describe_parameters")
    assert client.wait_for_service(timeout_sec=10.0)
    future = client.call_async(DescribeParameters.Request(names=names))
    bench.executor.spin_until_future_complete(future, timeout_sec=10.0)
    return list(future.result().descriptors)


@pytest.mark.parametrize(
    ("parameters", "needles"),
    # rclpy checks a double's range itself (its words); the rest is ours.
    [({"burst_seconds": -1.0}, ("burst_seconds", "0.001")),
     ({"quality": 2.0, "min_quality": 3.0}, ("min_quality (3) exceeds quality (2)",)),
     ({"output_reliability": "sometimes"}, ("output_reliability must be one of best_effort, reliable",))],  # fmt: skip
)
def test_a_parameter_out_of_its_range_stops_the_node_at_start_naming_it(tmp_path, parameters, needles):
    """One line, exit status 2, no traceback: what a launcher shows the user."""
    env = ros_environment(70, tmp_path / "ros_log")
    process = start_encoder(env, tmp_path / "encoder.log", {**LOSSLESS_PARAMETERS, "model": "hyper-vr", **parameters})
    deadline = time.monotonic() + 120
    while process.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    code, output = process.stop(), process.output()
    assert code == 2 and "cannot start" in output and "Traceback" not in output, output
    assert all(needle in output for needle in needles), output


def test_sigint_ends_a_node_busy_coding_a_frame_within_launchs_five_seconds(tmp_path):
    """ros2 launch escalates SIGINT to SIGTERM after 5 s: an encoder deep in a frame (here refining it
    for minutes) abandons it and exits with status 0 well before."""
    projection, lidar_to_camera, frames = kitti_frames(1)
    rgb, scan = frames[0]
    env = ros_environment(68, tmp_path / "ros_log")
    encoder = start_encoder(
        env, tmp_path / "encoder.log", {**LOSSLESS_PARAMETERS, "model": "hyper", "device": "cpu", "effort": 1000}
    )
    bench = RosBench(68)
    try:
        bench.wait_for_subscribers([encoder], image=1, scan=1)
        bench.publish_static_transform(lidar_to_camera, "camera", "velodyne")
        bench.publish_camera_info(projection, rgb.shape[1], rgb.shape[0], "camera")
        bench.publish_frame(rgb, scan, START_NS)

        def coding() -> bool:
            stats = bench.latest_statistics("/pcic_test/pcic_encoder")
            return stats is not None and stats.frames_in == 1 and stats.queue_depth == 0 and stats.frames_out == 0

        assert bench.spin_until(coding, 120, [encoder]), encoder.output()
        time.sleep(1.0)
        encoder.process.send_signal(signal.SIGINT)
        signalled = time.monotonic()
        encoder.process.wait(timeout=30)
        stopped_s = time.monotonic() - signalled
    finally:
        bench.close()
        code = encoder.stop()
    assert code == 0 and stopped_s < 5.0, (code, stopped_s, encoder.output())
