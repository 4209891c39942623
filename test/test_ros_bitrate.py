"""A starved link: the encoder node keeps the compressed stream under target_bitrate, on a ladder of
single-rate models (by dropping what even the lowest step cannot carry) and on a variable-rate model's
continuous quality (by choosing the quality in between that fits)."""

import pytest
from ros_harness import RosBench, ros_environment, start_pair
from test_ros_bad_input import describe, half_size
from test_ros_nodes import FRAME_PERIOD_NS, START_NS, kitti_frames

from pcic_ros.codec.api import Codec
from pcic_ros.codec.bitstream import read_header
from pcic_ros.ros.messages import stamp_to_ns

pytestmark = pytest.mark.slow

FRAMES = 20
BURST_S = 1.0


def run_encoder(tmp_path, encoder_parameters: dict, rgb, scan, projection, lidar_to_camera):
    """Publish FRAMES frames at 10 Hz into a running encoder; (its last statistics, the frames it
    sent as (stamp seconds, bits, message quality, container quality))."""
    height, width = rgb.shape[:2]
    env = ros_environment(64, tmp_path / "ros_log")
    # The frames are published at once: a work queue that holds them all lets rate control, not the
    # machine's load, decide which are sent.
    encoder = {"device": "cpu", "burst_seconds": BURST_S, "work_queue_size": FRAMES, **encoder_parameters}
    processes = start_pair(env, tmp_path, encoder, {"device": "cpu"})
    bench = RosBench(64)
    try:
        bench.wait_for_subscribers(processes, image=1, scan=2)
        bench.publish_static_transform(lidar_to_camera, "camera", "velodyne")
        bench.publish_camera_info(projection, width, height, "camera")
        for index in range(FRAMES):
            bench.publish_frame(rgb, scan, START_NS + index * FRAME_PERIOD_NS)

        def all_accounted() -> bool:
            stats = bench.latest_statistics("/pcic_test/pcic_encoder")
            if stats is None:
                return False
            return stats.frames_out + stats.frames_dropped_budget + stats.frames_dropped_queue == FRAMES

        assert bench.spin_until(all_accounted, 240, processes), describe(
            bench.latest_statistics("/pcic_test/pcic_encoder")
        )
        stats = bench.latest_statistics("/pcic_test/pcic_encoder")
        assert bench.spin_until(lambda: len(bench.compressed) == stats.frames_out, 30)
    finally:
        bench.close()
        for process in processes:
            process.stop()
    sent = sorted(
        (stamp_to_ns(m.header.stamp) / 1e9, 8 * len(m.data), m.quality, read_header(bytes(m.data)).quality)
        for m in bench.compressed
    )
    print(f"{encoder_parameters}: {len(sent)} of {FRAMES} frames sent, qualities {[q for _, _, q, _ in sent]}")
    return stats, sent


def assert_budget_holds(sent, target: float) -> None:
    """On the stream's own clock, any span of frames carries at most target * (span + burst)."""
    for first in range(len(sent)):
        for last in range(first, len(sent)):
            bits = sum(frame[1] for frame in sent[first : last + 1])
            assert bits <= target * (sent[last][0] - sent[first][0] + BURST_S) + 1e-6


@pytest.fixture(scope="module")
def frame():
    projection, lidar_to_camera, frames = kitti_frames(1)
    projection, rgb = half_size(projection, frames[0][0])
    return rgb, frames[0][1], projection, lidar_to_camera


def test_low_target_bitrate_holds_on_the_running_encoder(tmp_path, frame):
    rgb = frame[0]
    lowest_bits = 8 * len(Codec("hyper", 1, device="cpu").encode(rgb, None, None))
    # At 10 frames/s, half the frames fit even at the lowest quality. An integer, as
    # `ros2 launch ... target_bitrate:=2000000` passes one to this float parameter.
    target = int(0.5 * 10 * lowest_bits)
    parameters = {"model": "hyper", "quality": 4, "min_quality": 1, "target_bitrate": target}
    stats, sent = run_encoder(tmp_path, parameters, *frame)
    assert stats.frames_dropped_budget > 0 and stats.target_bits_per_second == target
    assert {quality for _, _, quality, _ in sent} <= {1.0, 2.0, 3.0, 4.0}
    assert_budget_holds(sent, target)


def test_a_variable_rate_encoder_finds_the_quality_in_between_that_fits(tmp_path, frame):
    """hyper-vr over 0.5..4.5 with the budget of quality 2.3 at 10 Hz: the first second spends the
    burst at the top quality, then the frames go out at qualities near 2.3 that are not whole numbers
    (at most the frame where the burst runs out is dropped); each message names the container's own
    quality."""
    rgb = frame[0]
    target = 10 * 8 * len(Codec("hyper-vr", 2.3, device="cpu").encode(rgb, None, None))
    parameters = {"model": "hyper-vr", "quality": 4.5, "min_quality": 0.5, "target_bitrate": target}
    stats, sent = run_encoder(tmp_path, parameters, *frame)
    assert stats.frames_dropped_queue == 0 and stats.frames_dropped_budget <= 1
    assert len(sent) == FRAMES - stats.frames_dropped_budget
    assert all(message == pytest.approx(container) for _, _, message, container in sent)
    settled = [quality for _, _, quality, _ in sent[-6:]]
    assert all(1.9 <= quality <= 2.45 for quality in settled), settled
    assert any(not float(quality).is_integer() for quality in settled)
    assert stats.current_quality == pytest.approx(sent[-1][2])
    assert_budget_holds(sent, target)
