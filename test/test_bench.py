"""The benches in bench/ run in-process on small inputs and print what they promise."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import torch
from conftest import DATA, REPO


def table_rows(output: str, columns: list) -> dict[str, dict[str, str]]:
    """The printed table as {codec: {column title: cell}}, cut at the bench's own column widths."""
    lines = output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("codec "))
    rows = {}
    for line in lines[header + 1 :]:
        if not line.strip() or line.startswith("point-cloud"):
            break
        cells, start = {}, 0
        for title, width, _ in columns:
            cells[title] = line[start : start + width].strip()
            start += width
        rows[cells["codec"]] = cells
    return rows


def test_the_codec_bench_prints_every_requested_codec_with_every_column(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    bench = importlib.import_module("bench_codecs")
    arguments = ["--data-dir", str(DATA), "--frames", "1", "--repeats", "1", "--sizes", "128x64", "--threads", "1"]
    threads = torch.get_num_threads()
    try:
        bench.main([*arguments, "--devices", "cpu", "--parts", "models,anchors,projection", "--models", "hyper-pc",
                    "--anchors", "jpeg"])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    output = capsys.readouterr().out

    assert "128 x 64: KITTI frames" in output
    assert "projection (project_points + equalize_depth" in output
    titles = [title for title, _, _ in bench.COLUMNS]
    assert output.splitlines()[[line.startswith("codec ") for line in output.splitlines()].index(True)].split() == [
        word for title in titles for word in title.split()
    ]
    rows = table_rows(output, bench.COLUMNS)
    assert sorted(rows) == ["hyper-pc", "jpeg"]
    model, jpeg = rows["hyper-pc"], rows["jpeg"]
    assert model["device"] == "cpu" and model["setting"] == "q4 shipped"
    for title in ("params M", "PC M", "bpp", "PSNR", "enc ms", "dec ms", "PC ms", "PC dec ms", "enc/JPEG", "dec/JPEG"):
        assert float(model[title]) > 0, title
    assert jpeg["enc/JPEG"] == jpeg["dec/JPEG"] == "1.00"
    assert jpeg["params M"] == jpeg["PC ms"] == "-"


def test_the_determinism_bench_decodes_in_another_process_with_another_thread_count(capsys, monkeypatch, tmp_path):
    """bench/determinism.py: encode with 2 threads, decode with 1 in another process; the fixed-point
    entropy path keeps the frame intact (exact, or within the synthesis' rounding)."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    bench = importlib.import_module("determinism")
    output_path = tmp_path / "outcomes.json"
    arguments = ["--data-dir", str(DATA), "--models", "hyper", "--frames", "1", "--output", str(output_path)]
    assert bench.main(arguments) == 0
    printed = capsys.readouterr().out
    assert "entropy path: fixed point; encode cpu x2 threads, decode cpu x1 threads" in printed
    (frame,) = json.loads(output_path.read_text())["frames"].values()
    assert frame["outcome"] in ("exact", "drift") and frame["max_abs_diff"] <= 1
    assert frame["bytes"] > 1000


def test_the_node_memory_bench_splits_all_of_a_process_resident_memory_by_mapping(monkeypatch):
    """bench/bench_node_memory.py: the split by kind of mapping accounts for the whole resident set, as
    the kernel's own sum over the mappings (smaps_rollup) gives it. Measured on an idle child process:
    this one has threads of earlier tests that may allocate between the two reads."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    monkeypatch.syspath_prepend(str(REPO / "test"))
    bench = importlib.import_module("bench_node_memory")
    holder = "import sys, time; held = bytearray(b'x' * (64 << 20)); print(flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        child.stdout.readline()
        split = bench.resident_by_kind(child.pid)
        rollup = Path(f"/proc/{child.pid}/smaps_rollup").read_text().splitlines()
    finally:
        child.kill()
        child.wait()
    total = next(int(line.split()[1]) for line in rollup if line.startswith("Rss:")) / 1024
    assert sorted(split) == sorted(bench.KINDS)
    assert abs(sum(split.values()) - total) < 1, (split, total)
    assert split["heap"] + split["thread heaps"] + split["other anonymous"] >= 64, split


def test_the_refinement_bench_prints_one_row_per_effort_and_refinement_never_raises_the_loss(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    bench = importlib.import_module("bench_refinement")
    arguments = ["--data-dir", str(DATA), "--frames", "1", "--efforts", "0,3", "--quality", "2.5", "--threads", "2"]
    assert bench.main(arguments) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("hyper-vr q2.5 (lambda ") and " x 256, cpu, 2 threads" in lines[0]
    rows = {row[0]: row for row in ([cell.strip() for cell in line.strip("|").split("|")] for line in lines[3:])}
    assert set(rows) == {"0", "3"}
    assert all(float(cell) > 0 for row in rows.values() for cell in row[1:])
    assert float(rows["3"][5]) <= float(rows["0"][5])
    torch.set_num_threads(2)
