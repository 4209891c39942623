"""pcic eval and pcic report on a real validation frame: real bytes, the paper crop, files, BD table."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import DATA
from PIL import Image

from pcic_ros.cli import main
from pcic_ros.codec.api import Codec
from pcic_ros.experiments.anchors import get_anchor
from pcic_ros.experiments.datasets import discover_frames
from pcic_ros.experiments.evaluation import (
    TABLE_END,
    TABLE_START,
    bd_table,
    evaluate,
    merge_results,
    pick_evenly,
    plot_rd,
    rd_curves,
    render_tables,
    update_markdown,
    write_results,
)
from pcic_ros.experiments.metrics import psnr
from pcic_ros.experiments.protocol import PAPER_CROP, crop_box, crop_calibration


@pytest.fixture(scope="module")
def frame():
    return discover_frames(DATA / "kitti_object")[1]


@pytest.fixture(scope="module")
def results(frame):
    out = evaluate([frame], ["hyper"], (1, 2, 3, 4), ["jpeg"], PAPER_CROP, progress=False)
    out["bd"] = bd_table(out["curves"], ["jpeg", "hyper"])
    return out


def test_records_are_real_bytes_of_the_paper_crop(results, frame):
    records = results["records"]
    assert len(records) == 4 + len(get_anchor("jpeg").qualities)
    assert all((r["width"], r["height"]) == (1242, 256) for r in records)
    image = frame.image()
    top, left, height, width = crop_box(*image.shape[:2], PAPER_CROP)
    crop = np.ascontiguousarray(image[top : top + height, left : left + width])
    calibration = crop_calibration(frame.calibration(), top, left)
    model_record = next(r for r in records if r["codec"] == "hyper" and r["quality"] == 3)
    data = Codec("hyper", 3, device="cpu").encode(crop, frame.scan(), calibration)
    assert model_record["bytes"] == len(data)
    assert model_record["bpp"] == pytest.approx(8 * len(data) / (1242 * 256))
    decoded = Codec("hyper", 3, device="cpu").decode(data, frame.scan(), calibration)
    assert model_record["psnr"] == pytest.approx(psnr(crop, decoded))
    jpeg_record = next(r for r in records if r["codec"] == "jpeg" and r["quality"] == 50)
    assert jpeg_record["bytes"] == len(get_anchor("jpeg").encode(crop, 50))
    for record in records:
        assert 0 < record["ms_ssim"] <= 1 and record["encode_s"] > 0 and record["decode_s"] > 0


def test_curves_are_ordered_by_rate_and_bd_table_covers_every_pair(results):
    for curve in results["curves"].values():
        rates = [p["bpp"] for p in curve["points"]]
        assert rates == sorted(rates)
    assert set(results["bd"]) == {"jpeg", "hyper"}
    assert set(results["bd"]["jpeg"]) == {"hyper"} and set(results["bd"]["hyper"]) == {"jpeg"}
    entry = results["bd"]["jpeg"]["hyper"]
    assert (entry["bd_rate"] is not None) or entry["note"]


def test_bd_of_a_curve_against_itself_shifted_in_rate():
    records = [
        {
            "codec": "a",
            "kind": "anchor",
            "quality": q,
            "bpp": b,
            "psnr": p,
            "ms_ssim": None,
            "encode_s": 1,
            "decode_s": 1,
        }
        for q, (b, p) in enumerate([(0.2, 28.0), (0.4, 30.5), (0.8, 33.0), (1.6, 35.0)])
    ]
    halved = [{**r, "codec": "b", "bpp": r["bpp"] / 2} for r in records]
    table = bd_table(rd_curves(records + halved), ["a"])
    assert table["a"]["b"]["bd_rate"] == pytest.approx(-50.0, abs=1e-6)


def test_json_csv_and_figure(results, tmp_path):
    json_path, csv_path = write_results(results, tmp_path)
    assert json.loads(json_path.read_text()) == results
    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(results["records"]) and int(rows[0]["bytes"]) == results["records"][0]["bytes"]
    figure = plot_rd(results, tmp_path / "rd.png")
    with Image.open(figure) as image:
        assert image.size[0] > 500 and image.size[1] > 300
        # Not a blank canvas: the curves and labels are drawn.
        assert np.asarray(image.convert("L")).std() > 10


def test_report_rewrites_the_table_block_from_the_json(results, tmp_path):
    json_path, _ = write_results(results, tmp_path)
    page = tmp_path / "results.md"
    page.write_text(f"# Results\n\nbefore\n\n{TABLE_START}\nstale\n{TABLE_END}\n\nafter\n")
    assert main(["report", str(json_path), "--markdown", str(page), "--figure", str(tmp_path / "fig.png")]) == 0
    text = page.read_text()
    assert "stale" not in text and text.startswith("# Results\n\nbefore") and text.endswith("after\n")
    assert render_tables(results) in text and "| HYPER | 1 |" in text and "BD against JPEG" in text
    update_markdown(page, render_tables(results))
    assert page.read_text() == text
    assert (tmp_path / "fig.png").is_file()
    plain = tmp_path / "plain.md"
    plain.write_text("# no block\n")
    with pytest.raises(ValueError, match="block"):
        update_markdown(plain, "x")


def test_report_merges_re_evaluated_codecs_into_the_results(results, frame, tmp_path):
    json_path, _ = write_results(results, tmp_path)
    update = evaluate([frame], ["hyper"], (1, 3), [], PAPER_CROP, progress=False)
    (tmp_path / "update").mkdir()
    update_path, _ = write_results(update, tmp_path / "update")
    assert main(["report", str(json_path), "--merge", str(update_path)]) == 0
    merged = json.loads(json_path.read_text())
    # HYPER's records are the update's (two qualities), JPEG's are kept; BD is recomputed.
    assert [p["quality"] for p in merged["curves"]["hyper"]["points"]] == [1, 3]
    assert merged["curves"]["jpeg"] == results["curves"]["jpeg"]
    assert sum(r["codec"] == "hyper" for r in merged["records"]) == 2
    assert set(merged["bd"]) == {"jpeg", "hyper"} and "hyper" in merged["bd"]["jpeg"]
    assert merged["meta"]["merged"][0]["codecs"] == ["hyper"]
    other = discover_frames(DATA / "kitti_object")[2]
    with pytest.raises(ValueError, match="frames"):
        merge_results(results, evaluate([other], ["hyper"], (1,), [], PAPER_CROP, progress=False))


def test_pick_evenly_spreads_over_the_split():
    frames = list(range(27))
    assert pick_evenly(frames, 3) == [0, 13, 26]
    assert pick_evenly(frames, 0) == frames and pick_evenly(frames, 40) == frames


def test_eval_codes_each_refinement_effort_as_its_own_curve(frame):
    """Refinement at effort 3 is a curve beside the one-pass model's, on the same frame and qualities,
    and its points are no worse in bpp + lambda * MSE (Codec.encode keeps the better of the two)."""
    results = evaluate([frame], ["hyper"], (2, 4), [], (128, 256), progress=False, efforts=(0, 3))
    assert set(results["curves"]) == {"hyper", "hyper+effort3"}
    by_setting = {(r["codec"], r["quality"]): r for r in results["records"]}
    for quality in (2, 4):
        lmbda = 0.004 * 2 ** (quality - 1)
        plain, refined = by_setting[("hyper", quality)], by_setting[("hyper+effort3", quality)]
        loss = [r["bpp"] + lmbda * 255**2 * 10 ** (-r["psnr"] / 10) for r in (plain, refined)]
        assert loss[1] <= loss[0] * (1 + 1e-9)
