"""Accuracy on real data: the whole pipeline (ingest → ... → evaluate) on Fashion-MNIST or the bundled
digits, on this machine's CPU, with a wall-clock training budget. The HOG + SVM baseline of the
evaluate stage runs on the same split, so every result carries its own classical anchor.

    python -m bench.accuracy --dataset fashion [--budget-minutes 15]   # official 10k test set as test
    python -m bench.accuracy --dataset digits                          # params.yaml defaults
    python -m bench.accuracy --quick                                   # fashion, 100/class, 1 epoch

Fashion-MNIST: the 60k training images are split train/val (90/10, by image hash); the official 10k
test images keep split=test through the manifest's split column. Writes bench/results/accuracy_<dataset>.json
and prints a Markdown table (test accuracy, macro-F1, baseline accuracy, epochs, seconds per stage)."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
import yaml
from mlflow import MlflowClient

from bench import fashion
from bench.common import run_stages, write_result
from tasks.common.params import Paths, deep_merge
from tasks.stages import STAGES

PIPELINE = [s for s in STAGES if s != "promote"]  # the registry decision is not what is measured here
# Published Fashion-MNIST test accuracies, for the table (zalandoresearch/fashion-mnist benchmark
# and papers): the anchors the issue names.
REFERENCES = {"Google AutoML (24 compute hours)": 0.939, "HOG + SVM": 0.926, "ResNet18": 0.949, "WRN-28-10": 0.959}


def fashion_sections(data_dir: Path, per_class: int | None, test_per_class: int | None) -> dict:
    manifest = fashion.write_folder(data_dir, per_class, test_per_class)
    return {
        "ingest": {"source": str(manifest)},
        "split": {"train": 0.9, "val": 0.1, "test": 0.0},  # test = the official test rows (split column)
        "augment": {
            "image_size": 28,
            "test_time_flip": True,
            "transforms": [
                {"name": "HorizontalFlip", "p": 0.5},
                {"name": "Affine", "translate_percent": [-0.06, 0.06], "scale": [0.95, 1.05], "p": 0.5},
            ],
        },
        "evaluate": {"baseline": {"image_size": 28}},
    }


def write_params(root: Path, sections: dict) -> Path:
    data = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))
    data["paths"] = {name: str(root / value) for name, value in Paths().model_dump().items()}
    for section, values in sections.items():
        data[section] = deep_merge(data.get(section) or {}, values)
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return params_file


def add_overrides_argument(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """The benches' repeatable `--set SECTION.KEY=VALUE` (args.overrides; read with parse_overrides)."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE", help=help)


def parse_overrides(pairs: list[str]) -> dict:
    """["train.batch_size=256", "clean.workers=16"] -> {"train": {"batch_size": 256}, "clean": {"workers": 16}};
    values are read as YAML. The stages' own Params still check every key and type."""
    sections: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        section, dot, name = key.partition(".")
        if not (sep and dot and section and name):
            raise SystemExit(f"--set {pair!r}: expected SECTION.KEY=VALUE")
        sections.setdefault(section, {})[name] = yaml.safe_load(value)
    return sections


def measure(
    dataset: str,
    root: Path,
    budget_minutes: float,
    network: str | None,
    epochs: int | None,
    per_class: int | None,
    test_per_class: int | None,
    overrides: dict | None = None,
) -> dict:
    sections = fashion_sections(root / "data", per_class, test_per_class) if dataset == "fashion" else {}
    sections["train"] = {"max_time_minutes": budget_minutes}
    if network:
        sections["train"]["network"] = network
    if epochs:
        sections["train"]["epochs"] = epochs
    params_file = write_params(root, deep_merge(sections, overrides or {}))
    paths = Paths(**yaml.safe_load(params_file.read_text(encoding="utf-8"))["paths"])
    # a reused --workdir must not resume an earlier (killed) training: the budget is per measurement
    shutil.rmtree(paths.train_dir, ignore_errors=True)
    seconds = run_stages(params_file, PIPELINE)
    metrics = json.loads((paths.report_dir("evaluate") / "metrics.json").read_text(encoding="utf-8"))
    index_rows = json.loads((Path(paths.prepared) / "stats.json").read_text(encoding="utf-8"))
    summary = json.loads((Path(paths.train_dir) / "run.json").read_text(encoding="utf-8"))
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    run = MlflowClient(summary["tracking_uri"]).get_run(summary["run_id"]).data
    return {
        "dataset": dataset,
        "budget_minutes": budget_minutes,
        "train": params["train"],
        "augment": params["augment"],
        "seconds": seconds,
        "test_acc": metrics["test/acc"],
        "test_macro_f1": metrics["test/macro_f1"],
        "val_acc": metrics.get("val/acc"),
        "baseline_test_acc": metrics.get("baseline/test/acc"),
        "baseline_kind": params["evaluate"]["baseline"]["kind"],
        "image_stats": index_rows,
        "mlflow_run_id": summary["run_id"],
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "this CPU",
        "precision": run.params.get("resolved.precision"),
        "epochs_run": int(run.metrics.get("train/epochs", 0)),
        "seconds_per_epoch": run.metrics.get("train/seconds_per_epoch"),
        "references": REFERENCES if dataset == "fashion" else {},
    }


def markdown(result: dict) -> str:
    lines = [
        f"{result['dataset']}: training budget {result['budget_minutes']} min, network {result['train']['network']}",
        "",
        "| model | test accuracy |",
        "|---|---|",
        f"| imgcls ({result['train']['network']}, {result.get('device', 'this CPU')}) | {result['test_acc']:.4f} |",
        f"| imgcls baseline ({result['baseline_kind']}, same split) | {result['baseline_test_acc']:.4f} |",
    ]
    lines += [f"| {name} (published) | {acc:.3f} |" for name, acc in result["references"].items()]
    lines.append(f"\n{result['epochs_run']} epochs at {result['seconds_per_epoch']} s each, {result['precision']}")
    lines.append("seconds: " + ", ".join(f"{k} {v}" for k, v in result["seconds"].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.accuracy", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=["fashion", "digits"], default="fashion")
    parser.add_argument("--budget-minutes", type=float, default=15.0, help="train.max_time_minutes")
    parser.add_argument("--network", default=None, help="train.network (default: params.yaml)")
    parser.add_argument("--epochs", type=int, default=None, help="train.epochs (default: params.yaml)")
    parser.add_argument("--per-class", type=int, default=None, help="fashion: train images per class (default all)")
    parser.add_argument("--test-per-class", type=int, default=None, help="fashion: test images per class (default all)")
    add_overrides_argument(parser, "any params.yaml value, e.g. --set clean.workers=16 --set train.batch_size=256")
    parser.add_argument("--quick", action="store_true", help="fashion, 100 train + 20 test per class, 1 epoch")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the project here (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="default bench/results/accuracy_<dataset>.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.per_class, args.test_per_class, args.epochs, args.budget_minutes = 100, 20, 1, 2.0
    out = args.out or Path(f"bench/results/accuracy_{args.dataset}{'_quick' if args.quick else ''}.json")
    with tempfile.TemporaryDirectory(prefix="accuracy_") as tmp:
        root = (args.workdir or Path(tmp)).resolve()
        root.mkdir(parents=True, exist_ok=True)
        result = measure(
            args.dataset,
            root,
            args.budget_minutes,
            args.network,
            args.epochs,
            args.per_class,
            args.test_per_class,
            parse_overrides(args.overrides),
        )
    write_result(result, out)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
