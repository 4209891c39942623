"""CodecStatistics: both nodes report periodically, before, during and after a burst of frames, with
counters that agree with each other and with the frames that crossed the link."""

import numpy as np
import pytest
from conftest import DATA
from ros_harness import RosBench, ros_environment, start_pair

from pcic_ros.codec.projection import Calibration
from pcic_ros.experiments.datasets import load_image, load_scan
from pcic_ros.ros.messages import stamp_to_ns
from pcic_ros.ros.node_support import PROBLEM_FIELDS

pytestmark = pytest.mark.slow

DRIVE = DATA / "kitti_raw" / "2011_09_26" / "2011_09_26_drive_sfnd_sync"
DOMAIN_ID = 66
FRAMES = 3
PERIOD_S = 0.5
#: Left columns only, to keep the CPU codec quick; a crop from the origin leaves P valid.
WIDTH = 320
START_NS = 1_317_000_000_000_000_000
ENCODER, DECODER = "/pcic_test/pcic_encoder", "/pcic_test/pcic_decoder"


def test_both_nodes_report_periodically_with_consistent_counters(tmp_path):
    calibration = Calibration.from_kitti_raw(DRIVE.parent)
    frames = [
        (
            np.ascontiguousarray(load_image(DRIVE / "image_02" / "data" / f"{index:010d}.png")[:, :WIDTH]),
            load_scan(DRIVE / "velodyne_points" / "data" / f"{index:010d}.bin"),
        )
        for index in range(FRAMES)
    ]
    height = frames[0][0].shape[0]
    env = ros_environment(DOMAIN_ID, tmp_path / "ros_log")
    processes = start_pair(
        env,
        tmp_path,
        {"model": "hyper-pc", "quality": 1, "min_quality": 1, "device": "cpu", "statistics_period": PERIOD_S},
        {"device": "cpu", "statistics_period": PERIOD_S},
    )
    bench = RosBench(DOMAIN_ID)

    def reports(node: str) -> list:
        return bench.statistics.get(node, [])

    try:
        bench.wait_for_subscribers(processes, image=1, scan=2)
        # Reports come before any frame: the nodes' health is visible on an idle link too.
        assert bench.spin_until(lambda: len(reports(ENCODER)) >= 2 and len(reports(DECODER)) >= 2, 60, processes)
        idle = {node: len(reports(node)) for node in (ENCODER, DECODER)}
        bench.publish_static_transform(calibration.rectification @ calibration.lidar_to_camera, "camera", "velodyne")
        for index, (rgb, scan) in enumerate(frames):
            bench.publish_camera_info(calibration.projection, WIDTH, height, "camera")
            bench.publish_frame(rgb, scan, START_NS + index * 100_000_000)
        assert bench.spin_until(lambda: len(bench.decoded) == FRAMES, 180, processes), [p.output() for p in processes]

        # After the last frame, each node goes on reporting the same totals, period after period.
        def settled(node: str) -> bool:
            return len([s for s in reports(node) if s.frames_out == FRAMES]) >= 3

        assert bench.spin_until(lambda: settled(ENCODER) and settled(DECODER), 60, processes)
    finally:
        bench.close()
        for process in processes:
            process.stop()

    sizes = [len(message.data) for message in sorted(bench.compressed, key=lambda m: stamp_to_ns(m.header.stamp))]
    assert len(sizes) == FRAMES
    fallbacks = sum(message.zeros_fallback for message in bench.compressed)
    for node in (ENCODER, DECODER):
        history = reports(node)
        assert len(history) >= idle[node] + 3
        assert {s.node_name for s in history} == {node}
        stamps = [stamp_to_ns(s.header.stamp) for s in history]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
        assert all(s.frames_in == s.frames_out == 0 for s in history[: idle[node]])
        for earlier, later in zip(history, history[1:], strict=False):
            for counter in ("frames_in", "frames_out"):
                assert getattr(earlier, counter) <= getattr(later, counter)
            # A node never reports more frames out than in.
            assert later.frames_out <= later.frames_in
        final = history[-1]
        assert final.frames_in == final.frames_out == FRAMES
        # The last frame sent, which need not be the last by stamp: a frame may wait for its calibration.
        assert final.last_bytes == len(bench.compressed[-1].data)
        assert final.queue_depth == 0 and final.current_quality == 1
        lost = ("frames_dropped_queue", "frames_dropped_budget", "frames_failed")
        assert {name: getattr(final, name) for name in lost} == dict.fromkeys(lost, 0)
        # Frames sent without their scan are counted at both ends, and at the encoder by their cause.
        assert final.frames_zeros_fallback == fallbacks
        problems = sum(getattr(final, name) for name in PROBLEM_FIELDS)
        assert problems == (fallbacks if node == ENCODER else 0)
        # Each frame counts in the bitrate and means of the one period it was coded in.
        assert sum(s.bits_per_second for s in history) * PERIOD_S / 8 == pytest.approx(sum(sizes))
        busy = [s for s in history if s.bits_per_second > 0]
        assert busy and all(s.mean_bytes > 0 and s.mean_bpp > 0 for s in busy)
        assert all(min(sizes) <= s.mean_bytes <= max(sizes) for s in busy)
        assert all(s.mean_bpp == pytest.approx(8 * s.mean_bytes / (WIDTH * height)) for s in busy)
        timing = [(s.encode_ms_mean, s.encode_ms_max) if node == ENCODER else (s.decode_ms_mean, s.decode_ms_max)
                  for s in busy]  # fmt: skip
        assert all(0 < mean <= peak for mean, peak in timing)
    encoder_final, decoder_final = reports(ENCODER)[-1], reports(DECODER)[-1]
    # What the encoder sent is what the decoder received and decoded.
    assert encoder_final.frames_out == decoder_final.frames_in == decoder_final.frames_out
    assert encoder_final.last_bytes == decoder_final.last_bytes
