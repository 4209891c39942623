"""pcic study on a tiny budget: the models study trained and evaluated end to end, the lossy-scan study on
its checkpoints, tables regenerated from results.json, and BD figures on curves of known offset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import DATA

from pcic_ros.cli import main
from pcic_ros.experiments.datasets import discover_frames
from pcic_ros.experiments.lossy_scan import compress_scan, decompress_scan
from pcic_ros.experiments.study import (
    BUDGET_FILE,
    DracoCodedFrame,
    Variant,
    checkpoint_budget,
    report_study,
    study_rows,
    study_variants,
    train_variants,
)
from pcic_ros.experiments.training import TrainConfig
from pcic_ros.models.pointcloud import ABLATIONS

pytestmark = pytest.mark.slow

RAW_DRIVE = DATA / "kitti_raw" / "2011_09_26"
SEQUENCE = "2011_09_26_drive_sfnd_sync"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """Two training frames of the KITTI raw drive and one validation frame of KITTI object, copied (the
    c_proj cache names frames by their image's real path below the data folder)."""
    root = tmp_path_factory.mktemp("data")
    for name in ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt"):
        (root / "kitti_raw" / "2011_09_26").mkdir(parents=True, exist_ok=True)
        shutil.copy(RAW_DRIVE / name, root / "kitti_raw" / "2011_09_26" / name)
    for stem in ("0000000010", "0000000011"):
        for folder, suffix in (("image_02/data", ".png"), ("velodyne_points/data", ".bin")):
            target = root / "kitti_raw" / "2011_09_26" / SEQUENCE / folder
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(RAW_DRIVE / SEQUENCE / folder / f"{stem}{suffix}", target)
    for folder, suffix in (("image_2", ".png"), ("velodyne", ".bin"), ("calib", ".txt")):
        target = root / "kitti_object" / "training" / folder
        target.mkdir(parents=True)
        shutil.copy(DATA / "kitti_object" / "training" / folder / f"000000{suffix}", target)
    return root


@pytest.fixture(scope="module")
def tiny_config(tiny_data, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    settings = {
        "data": str(tiny_data),
        "cache": str(path.parent / "cache"),
        "crop_size": 64,
        "batch_size": 1,
        "steps": 100,
        "num_workers": 0,
        "log_every": 1,
        "validate_every": 1000,
        "validation_frames": 1,
        "validation_crop": [64, 64],
        "checkpoint_every": 1000,
    }
    path.write_text(yaml.safe_dump(settings))
    return path


def study_command(study: str, config: Path, output: Path, *extra: str) -> list[str]:
    common = ["--config", str(config), "--qualities", "1", "--frames", "1", "--crop", "64x64", "--device", "cpu"]
    return ["study", study, *common, "--output", str(output), *extra]


def table_rows(table: str) -> dict[str, list[str]]:
    """The study table's rows (before the RD points) by codec label."""
    rows = {}
    for line in table.split("RD points (means")[0].splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] != "codec":
            rows[cells[0]] = cells
    return rows


@pytest.fixture(scope="module")
def models_study(tiny_config, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("study") / "models"
    assert main(study_command("models", tiny_config, output, "--steps", "2")) == 0
    return output


def test_models_study_trains_every_variant_with_one_budget(models_study, tiny_config):
    results = json.loads((models_study / "results.json").read_text())
    assert list(results["curves"]) == ["elic", "elic-pc", "elic-pa"]
    for name in ("elic", "elic-pc", "elic-pa"):
        # Two steps each, from the run folder's own log: the same budget for every model.
        log = (models_study / "runs" / f"{name}-q1" / "train_log.csv").read_text().splitlines()
        assert [line.split(",")[0] for line in log[1:]] == ["1", "2"]
        assert (models_study / "checkpoints" / f"{name}-q1.pt").is_file()
    budgets = yaml.safe_load((models_study / "checkpoints" / BUDGET_FILE).read_text())
    assert sorted(budgets) == ["elic-pa-q1", "elic-pc-q1", "elic-q1"]
    for budget in budgets.values():
        assert budget["config"]["steps"] == 2 and budget["config_file"] == str(tiny_config)
    assert results["meta"]["budget"]["config"]["steps"] == 2
    # Real bitstreams of the validation frame's crop: the whole pcic container, header included.
    for record in results["records"]:
        assert record["frame"] == "kitti_object/training/000000"
        assert (record["width"], record["height"]) == (64, 64)
        assert record["bpp"] == pytest.approx(8 * record["bytes"] / (64 * 64))
    params = {label: float(row["parameters (M)"]) for label, row in results["meta"]["rows"].items()}
    assert params["elic"] < params["elic-pa"] and params["elic-pa"] == pytest.approx(params["elic-pc"], rel=0.01)

    table = (models_study / "table.md").read_text()
    assert "**Training budget: 2 steps per model and quality**, batch 1 of 64 x 64 crops" in table
    assert "Evaluated on 1 validation frame (64 x 64 crop), qualities 1, on cpu." in table
    rows = table_rows(table)
    assert list(rows) == ["ELIC", "ELIC-PC", "ELIC-PA"]
    assert rows["ELIC"][1] == "ELIC" and rows["ELIC-PA"][1] == "ELIC(PA)"
    assert rows["ELIC"][-3:-1] == ["0.00", "0.00"]
    # One quality is one RD point: too few for BD, and the row says so instead of inventing a number.
    assert rows["ELIC-PC"][-3:] == ["-", "-", "vs ELIC: anchor: BD metrics need at least 4 RD points, got 1"]
    assert (models_study / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_finished_runs_are_not_trained_again(models_study, tiny_config):
    """As when another study shares the training folder (--train-dir): the runs it needs are done."""
    # The study ran on the CPU by --device; the device does not change what a run learns.
    config = TrainConfig.from_yaml(tiny_config, steps=2)
    before = {p.parent.name: p.stat().st_mtime_ns for p in (models_study / "runs").glob("*/model.pt")}
    train_variants(["elic", "elic-pc", "elic-pa"], [1], config, models_study, str(tiny_config), progress=False)
    after = {p.parent.name: p.stat().st_mtime_ns for p in (models_study / "runs").glob("*/model.pt")}
    assert before == after and len(after) == 3
    assert (models_study / "checkpoints" / BUDGET_FILE).is_file()


def test_lossy_scan_study_evaluates_existing_checkpoints(models_study, tiny_config, tmp_path):
    output = tmp_path / "lossy"
    command = study_command("lossy-scans", tiny_config, output, "--checkpoints", str(models_study / "checkpoints"))
    assert main([*command, "--bits", "8"]) == 0
    assert not (output / "runs").exists()
    results = json.loads((output / "results.json").read_text())
    assert list(results["curves"]) == ["elic-pc", "elic-pc (draco 8 bits)", "elic"]
    assert list(results["bd"]) == ["elic-pc"]
    # The checkpoints code the very bytes they coded in the study that trained them.
    fields = ("codec", "quality", "frame", "bytes", "psnr")
    trained = json.loads((models_study / "results.json").read_text())["records"]
    for codec in ("elic-pc", "elic"):
        again = [[r[f] for f in fields] for r in results["records"] if r["codec"] == codec]
        assert again == [[r[f] for f in fields] for r in trained if r["codec"] == codec]
    rows = results["meta"]["rows"]
    assert rows["elic-pc"]["error bound (cm)"] == "0.000"
    assert 0 < float(rows["elic-pc (draco 8 bits)"]["scan (kB)"]) < float(rows["elic-pc"]["scan (kB)"]) / 50
    assert float(rows["elic-pc (draco 8 bits)"]["error bound (cm)"]) > 10
    table = (output / "table.md").read_text()
    # The budget comes from the checkpoints' own record, not from this command's config.
    assert "**Training budget: 2 steps per model and quality**" in table
    assert list(table_rows(table)) == ["ELIC-PC", "ELIC-PC (DRACO 8 BITS)", "ELIC"]


def test_checkpoint_budget_is_one_budget_or_none(models_study, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(models_study / "checkpoints", checkpoints)
    assert checkpoint_budget(checkpoints, ["elic-q1", "elic-pa-q1"])["config"]["steps"] == 2
    budgets = yaml.safe_load((checkpoints / BUDGET_FILE).read_text())
    budgets["elic-pa-q1"]["config"]["steps"] = 3
    (checkpoints / BUDGET_FILE).write_text(yaml.safe_dump(budgets))
    mixed = checkpoint_budget(checkpoints, ["elic-q1", "elic-pa-q1"])
    assert mixed["mixed"] and mixed["config"] is None
    assert checkpoint_budget(checkpoints, ["elic-q1", "elic-pc-q1"])["config"]["steps"] == 2
    unrecorded = checkpoint_budget(checkpoints, ["elic-q1", "elic-q2"])
    assert unrecorded["config"] is None and not unrecorded["mixed"]


def test_report_only_rebuilds_table_and_plot_from_results(models_study, tmp_path):
    shutil.copy(models_study / "results.json", tmp_path / "results.json")
    assert main(["study", "models", "--report-only", "--output", str(tmp_path)]) == 0
    assert (tmp_path / "table.md").read_text() == (models_study / "table.md").read_text()
    assert (tmp_path / "rd.png").is_file()
    with pytest.raises(ValueError, match="holds the 'models' study"):
        report_study("ablations", tmp_path)


def test_bd_rows_of_curves_with_a_known_rate_offset(models_study, tmp_path):
    """Four qualities where ELIC-PC needs 10 % fewer bits than ELIC at every PSNR and ELIC(PA) 5 % fewer:
    the regenerated table says -10 % and -5 %, with the budget line as recorded."""
    results = json.loads((models_study / "results.json").read_text())
    psnrs = [30.0, 32.0, 34.0, 36.0]
    anchor = [0.2, 0.35, 0.55, 0.8]
    for codec, factor in (("elic", 1.0), ("elic-pc", 0.9), ("elic-pa", 0.95)):
        points = [
            {
                "quality": q + 1,
                "frames": 1,
                "bpp": b * factor,
                "psnr": p,
                "ms_ssim": None,
                "encode_s": 1.0,
                "decode_s": 1.0,
            }
            for q, (b, p) in enumerate(zip(anchor, psnrs, strict=True))
        ]
        results["curves"][codec]["points"] = points
    (tmp_path / "results.json").write_text(json.dumps(results))
    report = report_study("models", tmp_path)
    assert report["bd"]["elic"]["elic-pc"]["bd_rate"] == pytest.approx(-10.0, abs=1e-6)
    rows = table_rows((tmp_path / "table.md").read_text())
    assert rows["ELIC-PC"][-3] == "-10.00" and rows["ELIC-PC"][-2].startswith("+")
    assert rows["ELIC-PA"][-3] == "-5.00"
    assert "**Training budget: 2 steps per model and quality**" in (tmp_path / "table.md").read_text()


def test_ablation_study_has_elic_and_every_ablation_of_elic_pc():
    models = [variant.model for variant in study_variants("ablations")]
    assert models[0] == "elic" and models[1] == "elic-pc"
    assert sorted(models[2:]) == sorted(f"elic-pc-{a}" for a in ABLATIONS if a != "full")
    lossy = study_variants("lossy-scans", [10, 14, 8])
    assert [v.quantization_bits for v in lossy] == [None, 14, 10, 8, None]
    assert lossy[-1] == Variant("elic")
    with pytest.raises(ValueError, match="Draco bits must be in 1..30"):
        study_variants("lossy-scans", [0, 12])


def test_draco_coded_frame_gives_the_decoded_scan(tiny_data):
    frame = next(f for f in discover_frames(tiny_data) if f.layout == "kitti_object")
    coded = DracoCodedFrame.of(frame, 10)
    assert (coded.name, coded.sequence, coded.image_path) == (frame.name, frame.sequence, frame.image_path)
    expected = decompress_scan(compress_scan(frame.scan(), 10))
    assert np.array_equal(coded.scan(), expected)
    assert not np.array_equal(coded.scan()[:, :3], frame.scan()[:, :3])


def test_ablation_rows_mark_the_paper_s_parts_and_sides():
    rows = study_rows("ablations", study_variants("ablations"), [])
    marks = {
        label: (
            row["paper"],
            row["PIP"],
            row["FG"],
            row["FF"],
            row["input"],
            row["scan at encoder"],
            row["scan at decoder"],
        )
        for label, row in rows.items()
    }
    assert marks == {
        "elic": ("ELIC", "-", "-", "-", "-", "-", "-"),
        "elic-pc": ("ELIC-PC", "yes", "enc + dec", "yes", "scan", "yes", "yes"),
        "elic-pc-no-pip": ("ELIC-PC w/o PIP", "-", "enc + dec", "yes", "scan", "yes", "yes"),
        "elic-pc-no-fg": ("ELIC-PC w/o FG", "yes", "-", "yes", "scan", "yes", "yes"),
        "elic-pc-no-ff": ("ELIC-PC w/o FF", "yes", "enc + dec", "-", "scan", "yes", "yes"),
        "elic-pc-encoder-only": ("ELIC-En", "yes", "enc", "-", "scan", "yes", "-"),
        "elic-pc-decoder-only": ("ELIC-De", "yes", "dec", "-", "scan", "-", "yes"),
        "elic-pc-zeros": ("ELIC-PC(zeros)", "yes", "enc + dec", "yes", "zeros", "-", "-"),
    }
