"""``pcic study``: the paper's experiments (sec. IV) on our data and budget, one command each.

    pcic study models        ELIC, ELIC-PC and ELIC(PA), ELIC widened to ELIC-PC's parameter count (Tables I, III)
    pcic study ablations     ELIC, ELIC-PC and ELIC-PC without PIP, FG or FF, with the scan at the encoder
                             or the decoder only, and with all-zeros input (Tables II-IV)
    pcic study lossy-scans   ELIC-PC with the scan Draco-coded at several bit depths, the decoded scan on
                             both sides, against the scan as recorded; ELIC for comparison (Fig. 10)

Every model of a study is trained with the same configuration and step count (``--config``,
``--steps``; ``pcic_ros.experiments.training.train``), at every quality asked for. The validation split is then
coded with real bitstreams (``pcic_ros.experiments.evaluation.evaluate``), and the study folder gets
``results.json`` and ``results.csv``, ``table.md`` (BD-rate against ELIC, or against ELIC-PC with the
scan as recorded for the lossy study, under a line stating the training budget) and ``rd.png``.

The study folder (or ``--train-dir``, which studies may share) also holds ``runs/<model>-q<quality>/``
(``pcic train`` run folders: running the same command again resumes unfinished runs and skips finished
ones) and ``checkpoints/`` (the exported weights as ``<model>-q<quality>.pt``, and ``budgets.yaml``, the
budget each was trained with). ``--checkpoints DIR`` evaluates such a folder instead of training;
``--report-only`` rebuilds the table and the plot from ``results.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from pcic_ros.codec.api import default_device
from pcic_ros.codec.zoo import MODELS, QUALITY_LAMBDAS
from pcic_ros.errors import InvalidArgumentError
from pcic_ros.experiments.datasets import DataError, Frame, discover_frames
from pcic_ros.experiments.evaluation import (
    bd_table,
    evaluate,
    parse_crop,
    pick_evenly,
    plot_rd,
    rd_curves,
    render_tables,
    write_results,
)
from pcic_ros.experiments.lossy_scan import (
    MAX_QUANTIZATION_BITS,
    MIN_QUANTIZATION_BITS,
    compress_scan,
    quantization_error_bound,
    round_trip_scan,
)
from pcic_ros.experiments.protocol import PAPER_CROP, split_by_sequence
from pcic_ros.experiments.training import TrainConfig, train
from pcic_ros.models import PointCloudCompressionModel
from pcic_ros.models.pointcloud import ABLATIONS

__all__ = [
    "STUDIES",
    "DEFAULT_BITS",
    "Variant",
    "DracoCodedFrame",
    "study_variants",
    "study_references",
    "study_rows",
    "train_variants",
    "checkpoint_budget",
    "evaluate_study",
    "render_study_table",
    "run_study",
    "report_study",
    "add_parser",
]

STUDIES: dict[str, str] = {
    "models": "ELIC vs ELIC-PC vs ELIC(PA) (the paper's Tables I and III)",
    "ablations": "Ablations of ELIC-PC's point-cloud branch (the paper's Tables II, III and IV)",
    "lossy-scans": "ELIC-PC with Draco-coded scans at both encoder and decoder (the paper's Fig. 10)",
}
DEFAULT_BITS: tuple[int, ...] = (8, 10, 12, 14)
#: Beside the checkpoints a study trains: per checkpoint (``<model>-q<quality>``) the budget it was
#: trained with, ``config_file`` and ``config`` (the TrainConfig less the model, quality and run folder).
BUDGET_FILE = "budgets.yaml"
#: The paper's training budget (sec. IV.A), for the comparison every table states.
PAPER_STEPS, PAPER_BATCH = 1_000_000, 8
#: Bytes per point of a scan kept as recorded: float32 x, y, z (reflectance is of no use to the codec).
RAW_BYTES_PER_POINT = 12

#: The paper's names of ELIC-PC's ablations (Tables II-IV).
_PAPER_ABLATION_NAMES = {
    "full": "ELIC-PC",
    "no-pip": "ELIC-PC w/o PIP",
    "no-fg": "ELIC-PC w/o FG",
    "no-ff": "ELIC-PC w/o FF",
    "encoder-only": "ELIC-En",
    "decoder-only": "ELIC-De",
    "zeros": "ELIC-PC(zeros)",
}


def _ablation_model(ablation: str) -> str:
    # The registry's rule (pcic_ros.codec.zoo): the full branch is elic-pc, each ablation elic-pc-<ablation>.
    return "elic-pc" if ablation == "full" else f"elic-pc-{ablation}"


def _paper_name(model: str) -> str:
    names = {"elic": "ELIC", "elic-pa": "ELIC(PA)"}
    names.update({_ablation_model(a): label for a, label in _PAPER_ABLATION_NAMES.items()})
    return names.get(model, model.upper())


@dataclass(frozen=True)
class Variant:
    """One row of a study: a registered model and, in the lossy study, the Draco bit depth of its scan
    (None: the scan as recorded)."""

    model: str
    quantization_bits: int | None = None

    @property
    def label(self) -> str:
        """The codec name of the variant's records, curve and row."""
        if self.quantization_bits is None:
            return self.model
        return f"{self.model} (draco {self.quantization_bits} bits)"


@dataclass(frozen=True)
class DracoCodedFrame(Frame):
    """A frame whose scan travels Draco-coded: ``scan()`` is the decoded scan, which the encoder (decoding
    its own bytes) and the decoder both hold."""

    quantization_bits: int = DEFAULT_BITS[-1]

    @classmethod
    def of(cls, frame: Frame, quantization_bits: int) -> DracoCodedFrame:
        values = {field.name: getattr(frame, field.name) for field in dataclasses.fields(Frame)}
        return cls(**values, quantization_bits=quantization_bits)

    def scan(self) -> np.ndarray:
        return round_trip_scan(super().scan(), self.quantization_bits)[0]


def study_variants(study: str, bits: Sequence[int] = DEFAULT_BITS) -> list[Variant]:
    """The rows of a study, in table order (``bits``: the Draco bit depths of the lossy study)."""
    if study == "models":
        return [Variant("elic"), Variant("elic-pc"), Variant("elic-pa")]
    if study == "ablations":
        return [Variant("elic"), *(Variant(_ablation_model(ablation)) for ablation in ABLATIONS)]
    if study == "lossy-scans":
        wrong = [b for b in bits if not MIN_QUANTIZATION_BITS <= b <= MAX_QUANTIZATION_BITS]
        if wrong:
            raise InvalidArgumentError(
                f"Draco bits must be in {MIN_QUANTIZATION_BITS}..{MAX_QUANTIZATION_BITS}, got {wrong}"
            )
        return [Variant("elic-pc"), *(Variant("elic-pc", b) for b in sorted(set(bits), reverse=True)), Variant("elic")]
    raise InvalidArgumentError(f"unknown study '{study}'; choose from {', '.join(STUDIES)}")


def study_references(study: str) -> list[str]:
    """The curves BD figures are taken against: the study's anchor first. The ablations also compare with
    ELIC-PC(zeros), whose difference to ELIC-PC is the paper's PC-gain (Table IV)."""
    return {"models": ["elic"], "ablations": ["elic", "elic-pc-zeros"], "lossy-scans": ["elic-pc"]}[study]


#: Settings that do not change what a run learns (its samples and noise depend on the seed and step
#: alone), so a run may be resumed under other values of them, e.g. on another machine.
_RUN_INDEPENDENT = ("device", "num_workers", "log_every", "validate_every", "checkpoint_every")


def _budget(config: TrainConfig, config_file: str | None) -> dict:
    """What a checkpoint learned from: the settings of its run less the model, quality and folder and
    those that change nothing learned (``_RUN_INDEPENDENT``)."""
    settings = dataclasses.asdict(config)
    for key in ("model", "quality", "output", *_RUN_INDEPENDENT):
        settings.pop(key)
    return {"config_file": config_file, "config": settings}


def _read_budgets(checkpoints: Path) -> dict[str, dict]:
    path = checkpoints / BUDGET_FILE
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def checkpoint_budget(checkpoints: str | Path, names: Sequence[str]) -> dict:
    """The budget the named checkpoints (``<model>-q<quality>``) of a folder were trained with:
    ``checkpoints``, ``config_file``, ``config`` (None when a checkpoint's budget is not recorded or
    they differ) and ``mixed`` (True when they differ)."""
    budgets = _read_budgets(Path(checkpoints))
    found = [budgets.get(name) for name in names]
    budget = {"checkpoints": str(checkpoints), "config_file": None, "config": None, "mixed": False}
    if all(found):
        if all(entry["config"] == found[0]["config"] for entry in found):
            budget.update(found[0])
        else:
            budget["mixed"] = True
    return budget


def _same_run(stored: dict, config: TrainConfig) -> bool:
    current = dataclasses.asdict(config)
    return all(stored.get(key) == value for key, value in current.items() if key not in _RUN_INDEPENDENT)


def _run_state(config: TrainConfig) -> str:
    """'finished' or 'stopped' when the run folder holds this very run (same settings), else 'absent'."""
    last = Path(config.output) / "last.pt"
    if not last.is_file():
        return "absent"
    state = torch.load(last, map_location="cpu", weights_only=True)
    if not _same_run(state.get("config", {}), config):
        return "absent"
    done = int(state["step"]) >= config.steps and (Path(config.output) / "model.pt").is_file()
    return "finished" if done else "stopped"


def train_variants(
    models: Sequence[str],
    qualities: Sequence[int],
    config: TrainConfig,
    folder: str | Path,
    config_file: str | None = None,
    progress: bool = True,
) -> Path:
    """Train every model at every quality with ``config`` (its model, quality and output replaced) into
    ``folder/runs``; returns ``folder/checkpoints``, which then holds every ``<model>-q<quality>.pt`` and
    their budgets (``config_file`` names where ``config`` came from). Runs already finished with the
    same settings are kept, runs that stopped early resume: studies that share ``folder`` train each
    model once."""
    if config.lmbda is not None:
        raise InvalidArgumentError("a study sets lambda by quality: leave lmbda out of the config (or null)")
    folder = Path(folder)
    checkpoints = folder / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    budget = _budget(config, config_file)
    runs = [(model, quality) for model in dict.fromkeys(models) for quality in qualities]
    for model, quality in tqdm(runs, desc="study: training", unit="run", disable=not progress):
        run = dataclasses.replace(
            config, model=model, quality=quality, output=str(folder / "runs" / f"{model}-q{quality}")
        )
        state = _run_state(run)
        if state != "finished":
            train(run, resume=state == "stopped", progress=progress)
        shutil.copyfile(Path(run.output) / "model.pt", checkpoints / f"{model}-q{quality}.pt")
        budgets = _read_budgets(checkpoints)
        budgets[f"{model}-q{quality}"] = budget
        (checkpoints / BUDGET_FILE).write_text(yaml.safe_dump(budgets, sort_keys=False))
    return checkpoints


def _scan_statistics(frames: Sequence[Frame], quantization_bits: int | None) -> dict[str, float]:
    """Mean bytes, bits per point and coordinate error bound of the frames' scans as the variant sends them."""
    sizes, bits_per_point, bounds = [], [], []
    for frame in frames:
        scan = frame.scan()
        if quantization_bits is None:
            size, bound = RAW_BYTES_PER_POINT * len(scan), 0.0
        else:
            size, bound = len(compress_scan(scan, quantization_bits)), quantization_error_bound(scan, quantization_bits)
        sizes.append(size)
        bits_per_point.append(8.0 * size / len(scan))
        bounds.append(bound)
    return {
        "bytes": float(np.mean(sizes)),
        "bits_per_point": float(np.mean(bits_per_point)),
        "error_bound_m": float(np.mean(bounds)),
    }


def _yes(flag: bool) -> str:
    return "yes" if flag else "-"


def _describe(
    study: str, variant: Variant, model: PointCloudCompressionModel, frames: Sequence[Frame]
) -> dict[str, str]:
    point_cloud = model.point_cloud
    row = {"paper": _paper_name(variant.model)}
    if study == "models":
        row["parameters (M)"] = f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}"
    if study == "ablations":
        fg = "-"
        if point_cloud is not None and (point_cloud.fg_analysis or point_cloud.fg_synthesis):
            sides = [s for s, on in (("enc", point_cloud.fg_analysis), ("dec", point_cloud.fg_synthesis)) if on]
            fg = " + ".join(sides)
        row["PIP"] = _yes(point_cloud is not None and point_cloud.pip)
        row["FG"] = fg
        row["FF"] = _yes(point_cloud is not None and point_cloud.ff)
        row["input"] = "-" if point_cloud is None else ("zeros" if point_cloud.zeros_input else "scan")
    if study in ("models", "ablations"):
        row["scan at encoder"] = _yes(model.scan_at_encoder)
        row["scan at decoder"] = _yes(model.scan_at_decoder)
    if study == "lossy-scans":
        if point_cloud is None:
            row.update({"scan": "not used", "scan (kB)": "-", "bits / point": "-", "error bound (cm)": "-"})
        else:
            stats = _scan_statistics(frames, variant.quantization_bits)
            bits = variant.quantization_bits
            row["scan"] = "as recorded (float32 x, y, z)" if bits is None else f"Draco, {bits} bits"
            row["scan (kB)"] = f"{stats['bytes'] / 1000:.1f}"
            row["bits / point"] = f"{stats['bits_per_point']:.1f}"
            row["error bound (cm)"] = f"{stats['error_bound_m'] * 100:.3f}"
    return row


def study_rows(study: str, variants: Sequence[Variant], frames: Sequence[Frame]) -> dict[str, dict[str, str]]:
    """Per variant label, the descriptive cells of its row: the paper's name, and what the study varies
    (parameters; the branch's parts and the sides that use the scan; the scan's coding and its cost on
    ``frames``). Kept in results.json, so that a report needs no models."""
    models = {}
    with torch.random.fork_rng(devices=[]):
        for name in dict.fromkeys(variant.model for variant in variants):
            models[name] = MODELS[name].build()
    return {variant.label: _describe(study, variant, models[variant.model], frames) for variant in variants}


def evaluate_study(
    study: str,
    variants: Sequence[Variant],
    frames: Sequence[Frame],
    qualities: Sequence[int],
    crop: tuple[int, int] | None,
    checkpoints: str | Path,
    device: str,
    progress: bool = True,
) -> dict:
    """Code the frames with every variant (real bitstreams, ``checkpoints/<model>-q<quality>.pt``); the
    results dictionary of ``pcic_ros.experiments.evaluation`` with the study's rows and BD table added."""
    recorded = [v.model for v in variants if v.quantization_bits is None]
    results = evaluate(frames, recorded, qualities, (), crop, checkpoints, device, progress)
    records, meta = list(results["records"]), results["meta"]
    for variant in (v for v in variants if v.quantization_bits is not None):
        draco_frames = [DracoCodedFrame.of(frame, variant.quantization_bits) for frame in frames]
        coded = evaluate(draco_frames, [variant.model], qualities, (), crop, checkpoints, device, progress)
        records += [{**record, "codec": variant.label} for record in coded["records"]]
    # Curves, plot and tables follow the study's row order (the sort is stable: frames keep theirs).
    order = {variant.label: index for index, variant in enumerate(variants)}
    records.sort(key=lambda record: order[record["codec"]])
    rows = study_rows(study, variants, frames)
    meta.update({"study": study, "title": STUDIES[study], "qualities": list(qualities), "rows": rows})
    curves = rd_curves(records)
    return {"meta": meta, "records": records, "curves": curves, "bd": bd_table(curves, study_references(study))}


def _crop_text(crop: list[int] | None) -> str:
    return f"{crop[1]} x {crop[0]} crop" if crop else "whole frames"


def _budget_line(meta: dict) -> str:
    budget = meta.get("budget", {})
    config = budget.get("config")
    frames = len(meta["frames"])
    evaluated = (
        f"Evaluated on {frames} validation frame{'s' if frames != 1 else ''} ({_crop_text(meta.get('crop'))}), "
        f"qualities {', '.join(str(q) for q in meta['qualities'])}, on {meta['device']}."
    )
    if config is None:
        why = "differs between the checkpoints" if budget.get("mixed") else "not recorded"
        return f"**Training budget: {why}** (checkpoints from `{budget.get('checkpoints')}`). {evaluated}"
    drops = "".join(f", x {factor} from {fraction:.0%}" for fraction, factor in config["learning_rate_drops"])
    return (
        f"**Training budget: {config['steps']:,} steps per model and quality**, batch {config['batch_size']} of "
        f"{config['crop_size']} x {config['crop_size']} crops, Adam {config['learning_rate']:g}{drops}, "
        f"seed {config['seed']}, config `{budget.get('config_file')}`, the training split of `{config['data']}` "
        f"(the paper: {PAPER_STEPS:,} steps, batch {PAPER_BATCH}). {evaluated}"
    )


def _bd_cell(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:+.{digits}f}"


def render_study_table(results: dict) -> str:
    """Markdown: the title, the budget line, one row per variant with its BD-rate (and BD-PSNR against
    the anchor) against each reference, then the RD points."""
    meta = results["meta"]
    references = study_references(meta["study"])
    rows = meta["rows"]
    columns = list(next(iter(rows.values())))
    anchor = references[0]
    headers = ["codec", *columns, f"BD-rate vs {anchor.upper()} (%)", f"BD-PSNR vs {anchor.upper()} (dB)"]
    headers += [f"BD-rate vs {reference.upper()} (%)" for reference in references[1:]]
    lines = [
        f"# {meta['title']}",
        "",
        _budget_line(meta),
        "",
        "Negative BD-rate: fewer bits for the same PSNR than the reference "
        f"({meta['bd_interpolation']} interpolation over the qualities' RD points).",
        "",
        "| " + " | ".join([*headers, "note"]) + " |",
        "|" + "---|" * (1 + len(columns)) + "---:|" * (len(headers) - 1 - len(columns)) + "---|",
    ]
    for label, description in rows.items():
        cells, notes = [label.upper(), *description.values()], []
        for reference in references:
            entry = results["bd"].get(reference, {}).get(label)
            if label == reference:
                values = ["0.00", "0.00"]
            elif entry is None:
                values = ["-", "-"]
            else:
                values = [_bd_cell(entry["bd_rate"]), _bd_cell(entry["bd_psnr"], 3)]
                if entry.get("note"):
                    notes.append(f"vs {reference.upper()}: {entry['note']}")
            cells += values if reference == anchor else values[:1]
        lines.append("| " + " | ".join([*cells, "; ".join(notes)]) + " |")
    lines += ["", "RD points (means over the frames):", "", render_tables({**results, "bd": {}})]
    return "\n".join(lines)


def _write_report(results: dict, folder: Path) -> tuple[Path, Path]:
    table = folder / "table.md"
    table.write_text(render_study_table(results))
    budget = results["meta"].get("budget", {})
    if budget.get("config"):
        title = f"{budget['config']['steps']:,} training steps per model and quality"
    else:
        title = "training budgets differ" if budget.get("mixed") else "training budget not recorded"
    figure = plot_rd(results, folder / "rd.png", title=f"{results['meta']['title']}\n{title}")
    return table, figure


def run_study(
    study: str,
    config: TrainConfig,
    output: str | Path,
    qualities: Sequence[int] = tuple(QUALITY_LAMBDAS),
    frames: int = 0,
    crop: tuple[int, int] | None = PAPER_CROP,
    checkpoints: str | Path | None = None,
    device: str | None = None,
    bits: Sequence[int] = DEFAULT_BITS,
    config_file: str | None = None,
    train_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Train (unless ``checkpoints`` is given), evaluate and report one study into ``output``; returns
    the results. ``config`` gives the training budget and the data with its validation split;
    ``frames`` validation frames are coded (0: all of them). Runs and checkpoints go to ``train_dir``
    (default: ``output``)."""
    variants = study_variants(study, bits)
    split = split_by_sequence(discover_frames(config.data), config.validation_sequences)
    picked = pick_evenly(split.validation, frames)
    if not picked:
        raise DataError(f"no validation frames in {config.data} (validation sequences {config.validation_sequences})")
    output = Path(output)
    if checkpoints is None:
        models = [v.model for v in variants]
        checkpoints = train_variants(models, qualities, config, train_dir or output, config_file, progress)
    names = [f"{model}-q{quality}" for model in dict.fromkeys(v.model for v in variants) for quality in qualities]
    budget = checkpoint_budget(checkpoints, names)
    results = evaluate_study(
        study, variants, picked, qualities, crop, checkpoints, device or default_device(), progress
    )
    results["meta"].update({"data": str(config.data), "split": "validation", "budget": budget})
    write_results(results, output)
    _write_report(results, output)
    return results


def report_study(study: str, output: str | Path) -> dict:
    """Rebuild ``table.md`` and ``rd.png`` of a study folder from its ``results.json`` (BD recomputed)."""
    output = Path(output)
    results = json.loads((output / "results.json").read_text())
    if results["meta"].get("study") != study:
        raise InvalidArgumentError(
            f"{output / 'results.json'} holds the '{results['meta'].get('study')}' study, not '{study}'"
        )
    results["bd"] = bd_table(results["curves"], study_references(study))
    _write_report(results, output)
    return results


def _run(args: argparse.Namespace) -> int:
    output = Path(args.output or f"out/study/{args.study}")
    if args.report_only:
        results = report_study(args.study, output)
    else:
        config = TrainConfig.from_yaml(
            args.config, steps=args.steps, data=args.data, cache=args.cache, device=args.device
        )
        results = run_study(
            args.study,
            config,
            output,
            qualities=args.qualities,
            frames=args.frames,
            crop=args.crop,
            checkpoints=args.checkpoints,
            device=args.device,
            bits=getattr(args, "bits", DEFAULT_BITS),
            config_file=args.config,
            train_dir=args.train_dir,
        )
    print(render_study_table(results))
    print(f"{output / 'results.json'}, {output / 'table.md'}, {output / 'rd.png'}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("study", description=__doc__.split("\n\n")[0])
    studies = parser.add_subparsers(dest="study", required=True)
    for name, title in STUDIES.items():
        sub = studies.add_parser(name, help=title, description=title)
        sub.add_argument(
            "--config", default="config/train/shipped.yaml", help="training configuration (default: %(default)s)"
        )
        sub.add_argument("--steps", type=int, help="training steps of every run (overrides the config)")
        sub.add_argument("--data", help="data folder (overrides the config)")
        sub.add_argument("--cache", help="c_proj cache of the training frames (overrides the config)")
        sub.add_argument("--device", help="cpu or cuda, for training and coding (default: cuda when available)")
        sub.add_argument(
            "--qualities", nargs="+", type=int, default=sorted(QUALITY_LAMBDAS), choices=sorted(QUALITY_LAMBDAS)
        )
        sub.add_argument("--frames", type=int, default=0, help="validation frames to code, spread evenly (0: all)")
        sub.add_argument(
            "--crop", type=parse_crop, default=PAPER_CROP, help="'paper' (1242x256, default), 'full' or WIDTHxHEIGHT"
        )
        sub.add_argument("--checkpoints", metavar="DIR", help="evaluate DIR/<model>-q<quality>.pt instead of training")
        sub.add_argument(
            "--report-only", action="store_true", help="rebuild table.md and rd.png from the study's results.json"
        )
        sub.add_argument("--output", help=f"study folder (default: out/study/{name})")
        sub.add_argument(
            "--train-dir",
            metavar="DIR",
            help="folder of the training runs and checkpoints (default: the study folder); studies given the "
            "same one train each model once",
        )
        if name == "lossy-scans":
            sub.add_argument(
                "--bits",
                nargs="+",
                type=int,
                default=list(DEFAULT_BITS),
                help="Draco quantisation bits per coordinate (default: %(default)s)",
            )
        sub.set_defaults(func=_run)
