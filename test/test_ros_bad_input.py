"""Bad input on the running nodes: each cause is counted, the nodes survive, frames still flow."""

import dataclasses

import numpy as np
import pytest
from pcic_ros.msg import CompressedFrame
from ros_harness import RosBench, ros_environment, start_pair
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from test_ros_nodes import FRAME_PERIOD_NS, START_NS, kitti_frames, offline_calibration

from pcic_ros.codec.api import Codec
from pcic_ros.codec.bitstream import pack, unpack
from pcic_ros.ros.conversions import ns_to_stamp, points_to_pointcloud2
from pcic_ros.ros.messages import stamp_to_ns

pytestmark = pytest.mark.slow

ENCODER = "/pcic_test/pcic_encoder"
DECODER = "/pcic_test/pcic_decoder"


def describe(statistics) -> str:
    return ", ".join(f"{name}={getattr(statistics, name)}" for name in statistics.get_fields_and_field_types())


def half_size(projection, rgb):
    """Every second pixel, with P scaled to match: small frames keep hyper-pc quick on a CPU."""
    scaled = np.array(projection, dtype=np.float64)
    scaled[:2] *= 0.5
    return scaled, np.ascontiguousarray(rgb[::2, ::2])


def test_bad_inputs_are_counted_and_never_stop_the_nodes(tmp_path):
    projection, lidar_to_camera, frames = kitti_frames(1)
    projection, rgb = half_size(projection, frames[0][0])
    scan = frames[0][1]
    height, width = rgb.shape[:2]
    env = ros_environment(63, tmp_path / "ros_log")
    processes = start_pair(
        env,
        tmp_path,
        {"model": "hyper-pc", "quality": 1, "device": "cpu", "scan_timeout": 0.3},
        {"device": "cpu", "scan_timeout": 1.0, "max_image_pixels": width * height, "problem_log_period": 0.0},
    )
    bench = RosBench(63)
    stamp = iter(range(START_NS, START_NS + 100 * FRAME_PERIOD_NS, FRAME_PERIOD_NS))

    def encoder_count(field: str, expected: int, timeout_s: float = 60) -> bool:
        return bench.spin_until(
            lambda: (s := bench.latest_statistics(ENCODER)) is not None and getattr(s, field) >= expected,
            timeout_s,
            processes,
        )

    def decoder_count(field: str, expected: int) -> bool:
        return bench.spin_until(
            lambda: (s := bench.latest_statistics(DECODER)) is not None and getattr(s, field) >= expected, 60, processes
        )

    def coded_frame(stamp_ns: int) -> CompressedFrame | None:
        return next((m for m in bench.compressed if stamp_to_ns(m.header.stamp) == stamp_ns), None)

    def publish(points, frame_id="velodyne"):
        now = next(stamp)
        if points is not None:
            bench.scan_pub.publish(points_to_pointcloud2(points, Header(stamp=ns_to_stamp(now), frame_id=frame_id)))
        bench.publish_frame(rgb, None, now)
        return now

    try:
        bench.wait_for_subscribers(processes, image=1, scan=2)
        bench.publish_static_transform(lidar_to_camera, "camera", "velodyne")
        bench.publish_camera_info(projection, width, height, "camera")
        # CameraInfo, TF and images are separate topics with no order between them: frames are sent
        # until one is coded with its scan, which shows the encoder has its calibration.
        good = None
        for _ in range(10):
            sent = publish(scan)
            assert bench.spin_until(lambda stamp=sent: coded_frame(stamp) is not None, 60, processes)
            if not coded_frame(sent).zeros_fallback:
                good = sent
                break
        assert good is not None
        publish(np.zeros((0, 4), np.float32))
        assert encoder_count("empty_scan", 1)
        publish(np.full((100, 4), np.nan, np.float32))
        assert encoder_count("nan_scan", 1)
        behind = scan.copy()
        behind[:, 0] *= -1  # Velodyne x points forward: mirrored, every point is behind the camera.
        publish(behind)
        assert encoder_count("no_points_in_view", 1)
        publish(scan, frame_id="lidar_without_tf")
        assert encoder_count("tf_missing", 1)
        dropout = publish(None)
        assert encoder_count("scan_timeout", 1)
        bench.image_pub.publish(Image(header=Header(stamp=ns_to_stamp(next(stamp)), frame_id="camera"), height=2,
                                      width=2, encoding="32FC1", step=8, data=bytes(16)))  # fmt: skip
        assert encoder_count("bad_encoding", 1)
        before = bench.latest_statistics(ENCODER).camera_info_mismatch
        bench.publish_camera_info(projection, width + 2, height, "camera")
        for _ in range(10):
            publish(scan)
            if encoder_count("camera_info_mismatch", before + 1, 5.0):
                break
        assert encoder_count("camera_info_mismatch", before + 1)
        sent = bench.latest_statistics(ENCODER).frames_out
        assert decoder_count("frames_out", sent), describe(bench.latest_statistics(DECODER))

        bench.compressed_pub.publish(CompressedFrame(header=Header(frame_id="camera"), data=b"not a pcic container"))
        assert decoder_count("corrupt_message", 1)
        # A well-formed container whose header asks for a 4K decode: dropped from its header, undecoded.
        header, strings = unpack(Codec("hyper", 1, device="cpu").encode(rgb, None, None))
        huge = dataclasses.replace(header, height=2160, width=3840, padded_height=2176, padded_width=3840)
        bench.compressed_pub.publish(CompressedFrame(header=Header(frame_id="camera"), codec="hyper", quality=1,
                                                     width=3840, height=2160, data=pack(huge, strings)))  # fmt: skip
        assert decoder_count("corrupt_message", 2)
        # A frame coded with a scan that never reaches the base station is dropped, not decoded.
        orphan = Codec("hyper-pc", 1, device="cpu").encode(rgb, scan, offline_calibration(projection, lidar_to_camera))
        orphan_stamp = next(stamp)
        bench.compressed_pub.publish(CompressedFrame(header=Header(stamp=ns_to_stamp(orphan_stamp), frame_id="camera"),
                                                     scan_stamp=ns_to_stamp(orphan_stamp), scan_frame_id="velodyne",
                                                     codec="hyper-pc", quality=1, width=width, height=height,
                                                     data=orphan))  # fmt: skip
        assert decoder_count("scan_timeout", 1)
        bench.publish_camera_info(projection, width, height, "camera")
        last = publish(scan)
        assert bench.spin_until(lambda: any(stamp_to_ns(m.header.stamp) == last for m in bench.decoded), 60, processes)
        assert all(process.process.poll() is None for process in processes)
    finally:
        bench.close()
        codes = [process.stop() for process in processes]
    assert codes == [0, 0], [process.output() for process in processes]
    compressed = {stamp_to_ns(m.header.stamp): m for m in bench.compressed}
    assert not compressed[good].zeros_fallback and compressed[dropout].zeros_fallback
    assert sum(m.zeros_fallback for m in compressed.values()) >= 6
    decoded = {stamp_to_ns(m.header.stamp) for m in bench.decoded}
    assert orphan_stamp not in decoded and {good, dropout, last} <= decoded
    encoder_log = processes[0].output()
    assert encoder_log.count("[scan_timeout,") == 1 and "32FC1" in encoder_log
    assert "3840 x 2160 exceeds max_image_pixels" in processes[1].output()
