"""A starved link: the encoder node keeps the compressed stream under target_bitrate.

Without trained checkpoints every quality codes to about the same size, so here the budget is held by
dropping frames; the choice of lower qualities is covered by test_ros_units."""

import pytest
from ros_harness import RosBench, ros_environment, start_pair
from test_ros_bad_input import describe, half_size
from test_ros_nodes import FRAME_PERIOD_NS, START_NS, kitti_frames

from pcic_ros.codec.api import Codec
from pcic_ros.ros.messages import stamp_to_ns

pytestmark = pytest.mark.slow

FRAMES = 20
BURST_S = 1.0


def test_low_target_bitrate_holds_on_the_running_encoder(tmp_path):
    projection, lidar_to_camera, frames = kitti_frames(1)
    projection, rgb = half_size(projection, frames[0][0])
    scan = frames[0][1]
    height, width = rgb.shape[:2]
    lowest_bits = 8 * len(Codec("hyper", 1, device="cpu").encode(rgb, None, None))
    # At 10 frames/s, half the frames fit even at the lowest quality. An integer, as
    # `ros2 launch ... target_bitrate:=2000000` passes one to this float parameter.
    target = int(0.5 * 10 * lowest_bits)
    env = ros_environment(64, tmp_path / "ros_log")
    processes = start_pair(
        env,
        tmp_path,
        {"model": "hyper", "quality": 4, "min_quality": 1, "device": "cpu", "target_bitrate": target,
         "burst_seconds": BURST_S},  # fmt: skip
        {"device": "cpu"},
    )
    bench = RosBench(64)
    try:
        bench.wait_for_subscribers(processes, image=1, scan=2)
        bench.publish_static_transform(lidar_to_camera, "camera", "velodyne")
        bench.publish_camera_info(projection, width, height, "camera")
        for index in range(FRAMES):
            bench.publish_frame(rgb, scan, START_NS + index * FRAME_PERIOD_NS)

        def all_accounted() -> bool:
            stats = bench.latest_statistics("/pcic_test/pcic_encoder")
            return stats is not None and stats.frames_out + stats.frames_dropped_budget == FRAMES

        assert bench.spin_until(all_accounted, 240, processes), describe(
            bench.latest_statistics("/pcic_test/pcic_encoder")
        )
        stats = bench.latest_statistics("/pcic_test/pcic_encoder")
        assert bench.spin_until(lambda: len(bench.compressed) == stats.frames_out, 30)
    finally:
        bench.close()
        for process in processes:
            process.stop()
    assert stats.frames_dropped_budget > 0 and stats.target_bits_per_second == target
    sent = sorted((stamp_to_ns(m.header.stamp) / 1e9, 8 * len(m.data), m.quality) for m in bench.compressed)
    print(f"target {target:.0f} bit/s: {len(sent)} of {FRAMES} frames sent, qualities {[q for _, _, q in sent]}")
    # The budget, on the stream's own clock: any span of frames carries at most target * (span + burst).
    for first in range(len(sent)):
        for last in range(first, len(sent)):
            bits = sum(b for _, b, _ in sent[first : last + 1])
            assert bits <= target * (sent[last][0] - sent[first][0] + BURST_S) + 1e-6
