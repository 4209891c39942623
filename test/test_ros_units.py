"""The ROS-free parts of the nodes: message conversions, time pairing, rate control, TF buffer."""

import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

from pcic_ros.ros.conversions import ns_to_stamp, points_to_pointcloud2, rgb_to_image
from pcic_ros.ros.messages import (
    CameraInfoError,
    ConversionError,
    ImageEncodingError,
    calibration_fields,
    camera_projection,
    carried_calibration,
    image_to_rgb,
    pointcloud2_to_points,
    stamp_to_ns,
)
from pcic_ros.ros.rate_control import RateController
from pcic_ros.ros.tf_buffer import TransformBuffer, TransformError, matrix_from_transform, transform_from_matrix
from pcic_ros.ros.time_sync import ApproximateTimePairer

RNG = np.random.default_rng(7)
MS = 1_000_000


# --- conversions ---------------------------------------------------------------------------------


def test_rgb_image_round_trips():
    rgb = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    msg = rgb_to_image(rgb, Header(frame_id="cam"))
    assert (msg.encoding, msg.step) == ("rgb8", 21)
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


@pytest.mark.parametrize(
    "encoding,order,channels", [("bgr8", [2, 1, 0], 3), ("bgra8", [2, 1, 0], 4), ("rgba8", [0, 1, 2], 4)]
)
def test_colour_encodings_with_row_padding_convert_to_rgb(encoding, order, channels):
    rgb = RNG.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    pixels = np.full((4, 6, channels), 255, np.uint8)
    pixels[:, :, :3] = rgb[:, :, order]
    step = 6 * channels + 5
    rows = np.zeros((4, step), np.uint8)
    rows[:, : 6 * channels] = pixels.reshape(4, -1)
    msg = Image(height=4, width=6, encoding=encoding, step=step, data=rows.tobytes()[:-5])
    np.testing.assert_array_equal(image_to_rgb(msg), rgb)


def kitti_crop() -> np.ndarray:
    """A real 64 x 96 colour crop: demosaicing and chroma subsampling are judged on real texture."""
    from conftest import crop_frame

    return crop_frame("kitti_raw", 64, 96)[0]


def image_message(encoding: str, pixels: np.ndarray, big_endian: bool = False) -> Image:
    rows = np.ascontiguousarray(pixels).reshape(pixels.shape[0], -1)
    data = rows.astype(">u2" if big_endian else "<u2").tobytes() if rows.dtype == np.uint16 else rows.tobytes()
    step = len(data) // pixels.shape[0]
    return Image(
        height=pixels.shape[0], width=pixels.shape[1], encoding=encoding, step=step, data=data, is_bigendian=big_endian
    )


@pytest.mark.parametrize("big_endian", [False, True])
def test_mono_images_become_grey_rgb_and_16_bits_scale_as_cv_bridge_does(big_endian):
    grey = RNG.integers(0, 256, (4, 6), dtype=np.uint8)
    np.testing.assert_array_equal(image_to_rgb(image_message("mono8", grey)), np.repeat(grey[:, :, None], 3, axis=2))
    deep = np.array([[0, 1, 128, 129, 257, 65535]], dtype=np.uint16)
    converted = image_to_rgb(image_message("mono16", deep, big_endian))
    np.testing.assert_array_equal(converted[0, :, 0], [0, 0, 0, 1, 1, 255])
    assert (converted == converted[:, :, :1]).all()


@pytest.mark.parametrize(
    "encoding,offsets",
    # Where R, then B, sit in each 2 x 2 cell of the mosaic (row, column); G fills the rest.
    [
        ("bayer_rggb8", ((0, 0), (1, 1))),
        ("bayer_bggr8", ((1, 1), (0, 0))),
        ("bayer_gbrg8", ((1, 0), (0, 1))),
        ("bayer_grbg8", ((0, 1), (1, 0))),
    ],  # fmt: skip
)
def test_bayer_mosaics_demosaic_to_the_colours_they_sampled(encoding, offsets):
    from pcic_ros.experiments.metrics import psnr

    rgb = kitti_crop()
    mosaic = rgb[:, :, 1].copy()
    for channel, (row, column) in zip((0, 2), offsets, strict=True):
        mosaic[row::2, column::2] = rgb[row::2, column::2, channel]
    converted = image_to_rgb(image_message(encoding, mosaic))
    # Red and blue swapped would lose about 10 dB on this crop.
    assert psnr(rgb, converted) > 25.0 and psnr(rgb, converted) > psnr(rgb[:, :, ::-1].copy(), converted) + 3.0


@pytest.mark.parametrize("encoding", ["yuv422", "yuv422_yuy2"])
def test_packed_yuv_422_converts_to_the_rgb_it_encodes(encoding):
    from pcic_ros.experiments.metrics import psnr

    rgb = kitti_crop()
    # BT.601 in studio range (Y 16-235), what UVC cameras send and OpenCV's UYVY/YUY2 conversions read.
    r, g, b = (rgb[:, :, channel] / 255.0 for channel in range(3))
    planes = (
        16 + 65.481 * r + 128.553 * g + 24.966 * b,
        128 - 37.797 * r - 74.203 * g + 112.0 * b,
        128 + 112.0 * r - 93.786 * g - 18.214 * b,
    )
    yuv = np.stack([np.rint(plane) for plane in planes], axis=2).astype(np.int32)
    # 4:2:2: one U and one V for each pair of pixels (their mean), then packed per layout.
    y, u, v = yuv[:, :, 0], (yuv[:, 0::2, 1] + yuv[:, 1::2, 1] + 1) // 2, (yuv[:, 0::2, 2] + yuv[:, 1::2, 2] + 1) // 2
    packed = np.empty((rgb.shape[0], rgb.shape[1] // 2, 4), np.uint8)
    layout = (u, y[:, 0::2], v, y[:, 1::2]) if encoding == "yuv422" else (y[:, 0::2], u, y[:, 1::2], v)
    for index, plane in enumerate(layout):
        packed[:, :, index] = plane
    converted = image_to_rgb(image_message(encoding, packed.reshape(rgb.shape[0], rgb.shape[1], 2)))
    assert psnr(rgb, converted) > 30.0
    with pytest.raises(ConversionError, match="odd width"):
        image_to_rgb(Image(height=1, width=3, encoding=encoding, step=6, data=bytes(6)))


def test_unsupported_encoding_and_short_data_are_rejected():
    with pytest.raises(ImageEncodingError, match="32FC1"):
        image_to_rgb(Image(height=2, width=2, encoding="32FC1", step=8, data=bytes(16)))
    with pytest.raises(ConversionError):
        image_to_rgb(Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(11)))


def test_camera_projection_checks_size_and_focal_length():
    info = CameraInfo(width=10, height=5)
    info.p = [700.0, 0, 5, 0, 0, 700.0, 2, 0, 0, 0, 1, 0]
    assert camera_projection(info, 10, 5)[0, 0] == 700.0
    with pytest.raises(CameraInfoError, match="10 x 5"):
        camera_projection(info, 12, 5)
    with pytest.raises(CameraInfoError):
        camera_projection(CameraInfo(width=10, height=5), 10, 5)


def test_pointcloud2_round_trips_float32_points_exactly():
    points = RNG.normal(size=(50, 4)).astype(np.float32)
    back = pointcloud2_to_points(points_to_pointcloud2(points, Header()))
    np.testing.assert_array_equal(back, points[:, :3].astype(np.float64))


def test_converted_arrays_do_not_change_with_the_message_they_were_read_from():
    """The conversions read rclpy's message buffers in place; what they return must not alias them."""
    rgb = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    image_msg = rgb_to_image(rgb, Header())
    points = RNG.normal(size=(20, 4)).astype(np.float32)
    cloud_msg = points_to_pointcloud2(points, Header())
    converted_rgb, converted_points = image_to_rgb(image_msg), pointcloud2_to_points(cloud_msg)
    for msg in (image_msg, cloud_msg):
        for index in range(len(msg.data)):
            msg.data[index] ^= 0xFF
    np.testing.assert_array_equal(converted_rgb, rgb)
    np.testing.assert_array_equal(converted_points, points[:, :3].astype(np.float64))


def test_pointcloud2_with_any_layout_padding_and_endianness():
    xyz = RNG.normal(size=(2, 3, 3))
    # Organised 2 x 3 cloud, big-endian, fields out of order and of mixed types, padded points and rows.
    dtype = np.dtype({"names": ["intensity", "z", "x", "y", "ring"], "formats": [">u2", ">f8", ">f4", ">f4", ">u1"],
                      "offsets": [0, 4, 12, 16, 22], "itemsize": 28})  # fmt: skip
    cloud = np.zeros((2, 3), dtype)
    cloud["x"], cloud["y"], cloud["z"] = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    cloud["x"][1, 2] = np.nan
    rows = np.zeros((2, 3 * 28 + 8), np.uint8)
    rows[:, : 3 * 28] = cloud.view(np.uint8).reshape(2, -1)
    types = {">u2": PointField.UINT16, ">f8": PointField.FLOAT64, ">f4": PointField.FLOAT32, "|u1": PointField.UINT8}
    fields = [
        PointField(name=name, offset=dtype.fields[name][1], datatype=types[dtype.fields[name][0].str], count=1)
        for name in dtype.names
    ]
    msg = PointCloud2(height=2, width=3, fields=fields, is_bigendian=True, point_step=28, row_step=3 * 28 + 8,
                      data=rows.tobytes(), is_dense=False)  # fmt: skip
    expected = np.stack([cloud["x"].astype(np.float64), cloud["y"].astype(np.float64), cloud["z"]], -1).reshape(-1, 3)
    np.testing.assert_array_equal(pointcloud2_to_points(msg), expected[np.isfinite(expected).all(1)])
    assert pointcloud2_to_points(msg).shape == (5, 3)


def test_pointcloud2_without_xyz_is_rejected():
    msg = PointCloud2(height=1, width=1, fields=[PointField(name="x", offset=0, datatype=7, count=1)],
                      point_step=4, row_step=4, data=bytes(4))  # fmt: skip
    with pytest.raises(ConversionError, match="y, z"):
        pointcloud2_to_points(msg)


def test_stamps_convert_exactly():
    assert stamp_to_ns(ns_to_stamp(1_317_000_000_123_456_789)) == 1_317_000_000_123_456_789


def test_a_compressed_frame_carries_its_calibration_bit_for_bit():
    from conftest import DATA
    from pcic_ros.msg import CompressedFrame

    from pcic_ros.codec.projection import Calibration, CalibrationError

    kitti = Calibration.from_kitti_raw(DATA / "kitti_raw" / "2011_09_26")
    calibration = Calibration.from_matrices(kitti.projection, kitti.rectification @ kitti.lidar_to_camera)
    frame = CompressedFrame()
    assert carried_calibration(frame) is None, "all zeros: coded without a scan"
    frame.projection, frame.camera_from_lidar = calibration_fields(calibration)
    carried = carried_calibration(frame)
    for name in ("projection", "rectification", "lidar_to_camera"):
        assert getattr(carried, name).tobytes() == getattr(calibration, name).tobytes(), name
    assert carried_calibration(object()) is None, "a message recorded before the fields existed"
    with pytest.raises(CalibrationError, match="rectification"):
        calibration_fields(kitti)
    frame.camera_from_lidar = [1.0] * 16
    with pytest.raises(CalibrationError, match="last row"):
        carried_calibration(frame)


# --- approximate time pairing --------------------------------------------------------------------


def test_pairs_within_slop_choose_the_closest_and_leave_the_queues():
    pairer = ApproximateTimePairer(queue_size=5, slop_ns=20 * MS)
    assert pairer.add_scan(95 * MS, "s95", 0) is None
    assert pairer.add_scan(104 * MS, "s104", 0) is None
    pair = pairer.add_image(100 * MS, "i100", 0)
    assert (pair.image, pair.scan, pair.scan_stamp_ns) == ("i100", "s104", 104 * MS)
    pair = pairer.add_image(101 * MS, "i101", 0)
    assert pair.scan == "s95"
    assert pairer.add_image(200 * MS, "i200", 0) is None
    assert pairer.add_scan(230 * MS, "s230", 0) is None
    assert pairer.add_scan(210 * MS, "s210", 0).image == "i200"


def test_unpaired_images_expire_after_slop_plus_timeout_and_full_queue_evicts_oldest():
    pairer = ApproximateTimePairer(queue_size=2, slop_ns=10 * MS)
    for index in range(3):
        pairer.add_image(index * 100 * MS, f"i{index}", arrival_ns=index * 100 * MS)
    assert pairer.evicted_images == [(0, "i0")]
    assert pairer.expire(now_ns=150 * MS, timeout_ns=30 * MS) == [(100 * MS, "i1")]
    assert pairer.expire(now_ns=239 * MS, timeout_ns=30 * MS) == []
    assert pairer.expire(now_ns=241 * MS, timeout_ns=30 * MS) == [(200 * MS, "i2")]
    assert pairer.waiting_images == 0


def test_pairing_edge_cases_follow_message_filters_approximate_time_synchronizer():
    """The cases where our pairing differed from message_filters (ROS 2, Python): a gap of exactly
    the slop does not pair, a stamp already queued is replaced (the replaced image is handed back),
    a full queue drops its oldest stamp (not its oldest arrival), and the message that just arrived
    is dropped first when it is the oldest; on a tie the candidate queued first wins."""
    pairer = ApproximateTimePairer(queue_size=3, slop_ns=10 * MS)
    assert pairer.add_scan(100 * MS, "s100", 0) is None
    assert pairer.add_image(110 * MS, "i110", 0) is None  # exactly the slop apart
    assert pairer.add_image(110 * MS, "i110b", 0) is None
    assert pairer.evicted_images == [(110 * MS, "i110")]
    assert pairer.add_scan(115 * MS, "s115", 0).image == "i110b"

    pairer = ApproximateTimePairer(queue_size=2, slop_ns=10 * MS)
    for stamp in (200, 100, 300):  # out of order: the oldest stamp goes, though it came second
        pairer.add_image(stamp * MS, f"i{stamp}", 0)
    assert pairer.evicted_images == [(100 * MS, "i100")]
    pairer.evicted_images.clear()
    pairer.add_scan(50 * MS, "s50", 0)
    assert pairer.add_image(50 * MS, "i50", 0) is None  # older than both queued: dropped at once
    assert pairer.evicted_images == [(50 * MS, "i50")]

    pairer = ApproximateTimePairer(queue_size=5, slop_ns=10 * MS)
    pairer.add_scan(96 * MS, "s96", 0)
    pairer.add_scan(104 * MS, "s104", 0)
    assert pairer.add_image(100 * MS, "i100", 0).scan == "s96"


# --- rate control --------------------------------------------------------------------------------


def code_frames(control: RateController, size_at, frames: int = 100, period_s: float = 0.1):
    """Run rate control over ``frames`` frames; ``size_at(frame, quality)`` is the coded size in bits.
    Returns [(time, bits, quality, tries)] of the frames sent."""
    sent = []
    for frame in range(frames):
        now = frame * period_s
        quality, tries = control.choose(now), 0
        while quality is not None:
            tries += 1
            bits = size_at(frame, quality)
            control.observe(quality, bits)
            if control.try_send(bits, now):
                sent.append((now, bits, quality, tries))
                break
            quality = control.choose(now, below=quality)
    return sent


def assert_budget_holds(sent, target_bps: float, burst_s: float, duration_s: float) -> None:
    for start in np.arange(0, duration_s, 0.5):
        for end in np.arange(start + 0.5, duration_s + 0.01, 0.5):
            bits = sum(b for t, b, _, _ in sent if start <= t <= end)
            assert bits <= target_bps * (end - start + burst_s) + 1e-6


def test_unlimited_rate_always_uses_best_quality():
    control = RateController(1, 4, target_bps=0)
    assert control.choose(0.0) == 4 and control.choose(0.0, below=4) is None
    assert control.try_send(10**9, 0.0)


def test_budget_holds_over_any_interval_and_lower_qualities_are_chosen():
    sizes = {1: 1000, 2: 2000, 3: 4000, 4: 8000}
    control = RateController(1, 4, target_bps=20_000, burst_s=0.5)
    sent = code_frames(control, lambda frame, quality: sizes[quality])
    used = [quality for _, _, quality, _ in sent]
    assert all(float(quality).is_integer() for quality in used), "a ladder uses its whole steps"
    # Each frame at 10 Hz may use 2000 bits on average: quality 2, with bursts spent at the start.
    assert used.count(2) > 50 and 4 not in used[10:]
    assert 0.45 < control.slope <= 1.0, "a retry measured sizes doubling per step"
    assert_budget_holds(sent, 20_000, 0.5, 10)


def test_a_continuous_knob_settles_on_the_quality_that_spends_the_budget():
    """A variable-rate model: sizes 0.45 octaves apart per quality (as hyper-vr's), content that
    changes slowly. Rate control finds the in-between quality that fits and spends most of the budget
    with about one encode per frame."""

    def size_at(frame: int, quality: float) -> int:
        return int(3000 * (1 + 0.2 * np.sin(frame / 15)) * 2 ** (0.45 * (quality - 2)))

    control = RateController(0, 5, target_bps=30_000, burst_s=0.5, continuous=True)
    sent = code_frames(control, size_at)
    qualities = [quality for _, _, quality, _ in sent]
    assert len(sent) == 100, "no frame dropped: every frame fits at some quality in range"
    assert len({q for q in qualities[20:] if not float(q).is_integer()}) > 5, "in-between qualities are used"
    # The content swings sizes by +-20 %: 0.26 octaves, 0.6 of a quality either side of 2.
    assert min(qualities[20:]) > 1.3 and max(qualities[20:]) < 2.9
    assert np.mean([tries for *_, tries in sent[20:]]) < 1.1
    assert sum(bits for t, bits, _, _ in sent if t >= 2.0) > 0.8 * 30_000 * 8.0
    assert_budget_holds(sent, 30_000, 0.5, 10)


def test_a_continuous_knob_codes_a_frame_at_most_three_times():
    # Sizes that rate control cannot predict: every other frame is 16 times larger.
    control = RateController(0, 5, target_bps=20_000, burst_s=1.0, continuous=True)
    sent = code_frames(control, lambda frame, quality: int((16 if frame % 2 else 1) * 400 * 2 ** (0.45 * quality)))
    assert max(tries for *_, tries in sent) <= 3
    assert_budget_holds(sent, 20_000, 1.0, 10)


def test_frames_are_dropped_when_even_the_lowest_quality_cannot_fit():
    control = RateController(1, 2, target_bps=100, burst_s=1.0)
    control.choose(0.0)
    control.observe(2, 2000)
    control.observe(1, 1000)
    assert control.choose(0.0, below=1) is None
    assert control.choose(0.0) is None
    assert not control.try_send(1000, 0.0)


@pytest.mark.parametrize(
    ("lowest", "highest", "continuous", "match"),
    [(3, 2, False, "must not exceed"), (1.5, 4, False, "whole numbers"), (0, 5, False, None)],
)
def test_a_quality_range_rate_control_cannot_use_is_refused(lowest, highest, continuous, match):
    if match is None:
        assert RateController(lowest, highest, 1000.0, continuous=continuous).highest == 5.0
    else:
        with pytest.raises(ValueError, match=match):
            RateController(lowest, highest, 1000.0, continuous=continuous)


# --- TF buffer -----------------------------------------------------------------------------------


def _random_rigid() -> np.ndarray:
    q, _ = np.linalg.qr(RNG.normal(size=(3, 3)))
    matrix = np.eye(4)
    matrix[:3, :3] = q * np.sign(np.linalg.det(q))
    matrix[:3, 3] = RNG.normal(size=3)
    return matrix


def test_matrix_and_transform_message_round_trip():
    matrix = _random_rigid()
    np.testing.assert_allclose(matrix_from_transform(transform_from_matrix(matrix, "a", "b")), matrix, atol=1e-12)


def test_lookup_composes_chains_through_a_common_ancestor():
    base_lidar, base_cam, cam_optical = _random_rigid(), _random_rigid(), _random_rigid()
    buffer = TransformBuffer()
    buffer.add(transform_from_matrix(base_lidar, "base", "lidar"), static=True)
    buffer.add(transform_from_matrix(base_cam, "base", "cam"), static=True)
    buffer.add(transform_from_matrix(cam_optical, "cam", "cam_optical"), static=True)
    expected = np.linalg.inv(base_cam @ cam_optical) @ base_lidar
    np.testing.assert_allclose(buffer.lookup("cam_optical", "lidar", 123), expected, atol=1e-9)
    with pytest.raises(TransformError):
        buffer.lookup("cam_optical", "radar", 123)


def test_dynamic_transforms_interpolate_and_never_extrapolate():
    buffer = TransformBuffer()
    start, end = np.eye(4), np.eye(4)
    end[:3, 3] = [2.0, 0.0, 0.0]
    buffer.add(transform_from_matrix(start, "odom", "base", stamp_ns=1000), static=False)
    buffer.add(transform_from_matrix(end, "odom", "base", stamp_ns=3000), static=False)
    np.testing.assert_allclose(buffer.lookup("odom", "base", 2000)[:3, 3], [1.0, 0.0, 0.0])
    with pytest.raises(TransformError, match="no transform"):
        buffer.lookup("odom", "base", 3001)


def test_tf2_semantics_time_zero_is_the_latest_common_time_and_a_leading_slash_is_refused():
    buffer = TransformBuffer()
    for stamp_ns, x in ((1000, 0.0), (3000, 2.0), (5000, 4.0)):
        pose = np.eye(4)
        pose[0, 3] = x
        buffer.add(transform_from_matrix(pose, "odom", "base", stamp_ns=stamp_ns), static=False)
    lidar = np.eye(4)
    lidar[2, 3] = 1.5
    buffer.add(transform_from_matrix(lidar, "base", "lidar"), static=True)
    np.testing.assert_allclose(buffer.lookup("odom", "lidar", 0)[:3, 3], [4.0, 0.0, 1.5])
    buffer.add(transform_from_matrix(np.eye(4), "odom", "camera", stamp_ns=2000), static=False)
    # The camera is known only at 2000: the latest time both chains are known.
    np.testing.assert_allclose(buffer.lookup("camera", "lidar", 0)[:3, 3], [1.0, 0.0, 1.5])
    np.testing.assert_array_equal(buffer.lookup("base", "lidar", 0), buffer.lookup("base", "lidar", 7))
    with pytest.raises(TransformError, match="starts with '/'"):
        buffer.lookup("/odom", "lidar", 0)
    with pytest.raises(TransformError, match="starts with '/'"):
        buffer.add(transform_from_matrix(np.eye(4), "/map", "odom"), static=True)
