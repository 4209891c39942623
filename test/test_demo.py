"""pcic demo, the README's main job: real frames through real bitstreams, JPEG shown with no fewer
bits than HYPER-PC, and the side-by-side image of each frame."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DATA, crop_frame
from PIL import Image

from pcic_ros.experiments.anchors import get_anchor
from pcic_ros.experiments.demo import jpeg_at_least, run_demo

pytestmark = pytest.mark.slow


def test_jpeg_for_the_comparison_is_the_smallest_with_at_least_the_bits_asked_for():
    image = crop_frame("kitti_object", 128, 256)[0]
    jpeg = get_anchor("jpeg")
    sizes = sorted(len(jpeg.encode(image, quality)) for quality in jpeg.qualities)
    for target in (1, sizes[3] - 1, sizes[3], sizes[3] + 1):
        data, quality = jpeg_at_least(image, target)
        assert len(data) == min(size for size in sizes if size >= target)
        assert data == jpeg.encode(image, quality)
    assert len(jpeg_at_least(image, sizes[-1] + 1)[0]) == sizes[-1], "none is that large: the largest"


def test_demo_codes_a_real_frame_and_shows_jpeg_with_no_fewer_bits(tmp_path, capsys):
    rows = run_demo(DATA, tmp_path, 1, 2.5, "cpu", rd_plot=False)
    assert len(rows) == 1
    row = rows[0]
    hyper_pc_bpp, hyper_pc_psnr = row["HYPER-PC"]
    assert row["jpeg"][0] >= hyper_pc_bpp and 20 < hyper_pc_psnr < 50
    width, height = (int(side) for side in row["size"].split("x"))
    (picture,) = tmp_path.glob("*.png")
    panels = np.asarray(Image.open(picture))
    assert panels.shape == (4 * height, width, 3), "original | HYPER-PC | HYPER | JPEG"
    assert "demo done in" in capsys.readouterr().out
