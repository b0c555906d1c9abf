"""``busflow <stage>``: one command per pipeline stage. Every Snakemake rule and DVC stage runs one of them.

Each command reads params.yaml (validated) and the explicit input paths it is given, and writes exactly
the explicit output paths it is given, atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from busflow import __version__


def _load(args: argparse.Namespace, *, check_registry: bool = True) -> dict[str, Any]:
    from busflow.config import load_params

    return load_params(args.params, check_registry=check_registry)


def cmd_validate(args: argparse.Namespace) -> None:
    params = _load(args)
    from busflow.config import params_sha256

    print(f"{args.params}: valid (dataset {params['dataset']}, models {', '.join(params['train']['models'])}, "
          f"sha256 {params_sha256(params)[:12]})")


def cmd_download(args: argparse.Namespace) -> None:
    from busflow.data.sources import fetch_dataset

    record = fetch_dataset(_load(args, check_registry=False), Path(args.out))
    print(f"{record['dataset']}: {record['origin']} source ready at {args.out}")


def cmd_preprocess(args: argparse.Namespace) -> None:
    from busflow.data.folder import patients_known
    from busflow.data.bad_samples import BadSamples
    from busflow.data.preprocess import preprocess_raw, save_arrays
    from busflow.io import write_csv

    params = _load(args, check_registry=False)
    settings, bad = params["preprocess"], BadSamples(params["data"]["on_bad_sample"])
    index, arrays, left_out = preprocess_raw(args.raw, settings, bad)
    save_arrays(args.arrays, arrays)
    write_csv(args.index, index)
    write_csv(args.skipped, bad.table())
    print(bad.summary(args.skipped))
    counts = ", ".join(f"{n} {label}" for label, n in index["label"].value_counts().sort_index().items())
    patients = f"{index['patient_id'].nunique()} patients" if patients_known(index) else "unknown patients"
    print(f"preprocessed {len(index)} images ({counts}) of {patients} to "
          f"{settings['size']} px, enhancement {settings['enhance']}; {int(index['colour_overlay'].sum())} with colour overlays; "
          f"{left_out} image(s) of classes outside preprocess.classes left out")


def cmd_group(args: argparse.Namespace) -> None:
    from busflow.split.groups import build_groups
    from busflow.io import read_table, write_csv

    split = _load(args, check_registry=False)["split"]
    index = read_table(args.index)
    groups, links = build_groups(index, split)
    write_csv(args.links, links)
    write_csv(args.groups, groups)
    multi = groups.groupby("group_id").size()
    print(f"{len(groups)} images in {len(multi)} groups; {int((multi > 1).sum())} groups of several images; "
          f"links: {links['reason'].value_counts().to_dict()}; {int(groups['label_conflict'].sum())} images in label conflicts")


def cmd_split(args: argparse.Namespace) -> None:
    from busflow.errors import DatasetError
    from busflow.split.groups import conflict_summary
    from busflow.io import read_table, write_csv
    from busflow.split.protocols import make_split

    params = _load(args, check_registry=False)
    split = params["split"]
    index = read_table(args.index)
    groups = read_table(args.groups)
    try:
        folds = make_split(index, groups, split, params["seed"])
        leaky = make_split(index, groups, split, params["seed"], protocol="random_image")
    except DatasetError as error:
        raise DatasetError(f"{args.index}: {error}") from None
    conflicts = conflict_summary(groups, index, split["label_conflicts"])
    if split["label_conflicts"] == "flag":
        for row in conflicts.itertuples():
            print(f"warning: label conflict in {row.group_id}: {row.images} filed as {row.labels}", file=sys.stderr)
    write_csv(args.conflicts, conflicts)
    write_csv(args.leaky, leaky)
    write_csv(args.folds, folds)
    print(f"{split['protocol']} split of {folds['group_id'].nunique()} groups; {len(conflicts)} label-conflict clusters "
          f"({split['label_conflicts']}); image-level split for the leakage study written too")


def cmd_audit(args: argparse.Namespace) -> None:
    from busflow.split.audit import audit_split
    from busflow.data.preprocess import load_arrays
    from busflow.io import read_table, write_csv, write_json

    arrays = load_arrays(args.arrays)
    splits = {"main": read_table(args.folds), "leakage_study": read_table(args.leaky)}
    summary, counts = audit_split(splits, read_table(args.index), arrays["image_ids"], arrays["images"])
    write_csv(args.counts, counts)
    write_json(args.out, summary)
    for item in summary["splits"]:
        state = "leaky by design" if item["leaky"] else "no group, patient or identical image crosses a role boundary"
        print(f"{item['split']} ({item['protocol']}): {item['crossings']} crossings, {state}")


def cmd_train(args: argparse.Namespace) -> None:
    from busflow.stages.train import ablation_spec, train_model

    params = _load(args)
    if (args.lr is None) != (args.variant is None):
        raise ValueError("an ablation cell needs both --lr and --variant")
    if args.variant is not None and args.model != params["ablation"]["model"]:
        raise ValueError(f"--variant: model '{args.model}' is not ablation.model ('{params['ablation']['model']}')")
    spec = ablation_spec(params, args.lr, args.variant) if args.variant is not None else None
    train_model(params, args.model, args.fold, Path(args.arrays), Path(args.folds), Path(args.out), spec)


def cmd_cascade(args: argparse.Namespace) -> None:
    from busflow.stages.cascade import run_cascade

    run_cascade(_load(args), args.fold, Path(args.arrays), Path(args.folds), Path(args.segmenter), Path(args.out))


def cmd_ensemble(args: argparse.Namespace) -> None:
    from busflow.stages.ensemble import build_ensembles

    build_ensembles(_load(args, check_registry=False), Path(args.arrays), Path(args.folds), Path(args.models), Path(args.out))


def cmd_external(args: argparse.Namespace) -> None:
    from busflow.stages.external import run_external

    run_external(_load(args), Path(args.arrays), Path(args.models), Path(args.out))


def cmd_queue_ablation(args: argparse.Namespace) -> None:
    import json
    import shlex
    import subprocess

    from busflow.layout import ablation_cell

    params = _load(args)
    ablation = params["ablation"]
    if ablation["model"] is None:
        raise ValueError(f"{args.params}: ablation.model is null, there is no grid to queue")
    key = f"models.{ablation['model']}"
    for lr in ablation["lr"]:
        for variant, options in ablation["options"].items():
            overrides = [f"{key}.lr={lr}", *(f"{key}.options.{name}={json.dumps(value)}" for name, value in options.items())]
            command = ["dvc", "exp", "run", "--queue", "--name", ablation_cell(lr, variant).replace("_", "-").replace(".", "p"),
                       *[part for override in overrides for part in ("-S", override)]]
            print(shlex.join(command))
            if not args.dry_run and subprocess.run(command).returncode:
                raise ValueError(f"`{shlex.join(command)}` failed (run it from a git + DVC repository holding this project)")
    print("then: dvc queue start -j N && dvc exp show" if not args.dry_run else "(dry run: nothing queued)")


def cmd_predict(args: argparse.Namespace) -> None:
    from busflow.serve.predict import predict_images

    table = predict_images(Path(args.model), args.input, Path(args.out), device=args.device, batch_size=args.batch_size,
                           threshold=args.threshold)
    print(f"{len(table)} image(s) predicted; masks, overlays and predictions.csv in {args.out}")


def cmd_package(args: argparse.Namespace) -> None:
    from busflow.serve.predictors import PACKAGE_SUFFIX, load_model_dir, save_package

    out = Path(args.out)
    if out.suffix != PACKAGE_SUFFIX:
        raise ValueError(f"--out {out}: a model package is a {PACKAGE_SUFFIX} file")
    save_package(load_model_dir(Path(args.model)), out)
    print(f"{args.model} packaged into {out} ({out.stat().st_size / 1e6:.1f} MB); use it with `busflow predict --model {out}`")


def cmd_demo(args: argparse.Namespace) -> None:
    from busflow.serve.demo import launch

    launch(Path(args.results), host=args.host, port=args.port, device=args.device, max_upload_mb=args.max_upload_mb)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from busflow.stages.evaluate import evaluate_model, headline

    metrics = evaluate_model(_load(args, check_registry=False), args.model, args.fold, Path(args.arrays), Path(args.predictions), Path(args.out))
    print(f"[{args.model} fold{args.fold}] {headline(metrics)}")


def cmd_report(args: argparse.Namespace) -> None:
    from busflow.config import params_sha256
    from busflow.evaluate.metrics import EMPTY_MASK_CONVENTIONS
    from busflow.report import build_report

    params = _load(args, check_registry=False)
    models = [*params["train"]["models"], params["cascade"]["name"], *params["ensembles"]]
    run_info = {"dataset": params["dataset"], "params_sha256": params_sha256(params), "busflow_version": __version__,
                "empty_mask_convention": EMPTY_MASK_CONVENTIONS[params["evaluate"]["empty_mask"]], "params": params}
    build_report(results_dir=Path(args.results), out_dir=Path(args.out), models=models, folds=params["train"]["folds"], run_info=run_info)
    print(f"report written to {Path(args.out) / 'index.html'}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="busflow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"busflow {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace], None], help_text: str, *paths: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
        sub.add_argument("--log", metavar="PATH", help="also write this command's messages to PATH")
        for path in paths:
            sub.add_argument(f"--{path}", required=True, metavar="PATH")
        sub.set_defaults(handler=handler)
        return sub

    command("validate", cmd_validate, "check params.yaml against the schema and the model registry")
    command("download", cmd_download, "create the raw dataset folder (synthetic phantoms, or a verified download)", "out")
    command("preprocess", cmd_preprocess, "index the raw folder; grayscale, resize, normalise, union masks", "raw", "index", "arrays", "skipped")
    command("group", cmd_group, "group images that must stay together: patients and near-duplicate frames", "index", "groups", "links")
    command("split", cmd_split, "grouped, stratified split of the configured protocol (and its leaky image-level twin)",
            "index", "groups", "folds", "leaky", "conflicts")
    command("audit", cmd_audit, "fail if any group, patient or identical image crosses a split boundary; count roles",
            "index", "arrays", "folds", "leaky", "out", "counts")
    sub = command("train", cmd_train, "train one model on one fold; predict its test part", "arrays", "folds", "out")
    sub.add_argument("--model", required=True)
    sub.add_argument("--fold", required=True, type=int)
    sub.add_argument("--lr", type=float, help="ablation cell: this learning rate (with --variant)")
    sub.add_argument("--variant", help="ablation cell: this option set of ablation.options (with --lr)")
    sub = command("cascade", cmd_cascade, "crop predicted lesions and train/test the cascade classifier on one fold", "arrays", "folds", "segmenter", "out")
    sub.add_argument("--fold", required=True, type=int)
    command("ensemble", cmd_ensemble, "combine and evaluate the predictions of trained models: every ensemble, every fold",
            "arrays", "folds", "models", "out")
    sub = command("queue-ablation", cmd_queue_ablation,
                  "queue the ablation grid as DVC experiments (dvc exp run --queue -S ...), one per cell")
    sub.add_argument("--dry-run", action="store_true", help="print the dvc commands without running them")
    command("external", cmd_external, "external validation: test the fold models on every image of other datasets",
            "arrays", "models", "out")
    sub = command("evaluate", cmd_evaluate, "metrics of one model on one test fold", "arrays", "predictions", "out")
    sub.add_argument("--model", required=True)
    sub.add_argument("--fold", required=True, type=int)
    command("report", cmd_report, "tables, figures and the HTML/Markdown report", "results", "out")
    sub = commands.add_parser("predict", help="run a trained model on new images (file, folder or glob)",
                              description="Run a trained model on new images. Preprocessing comes from the model's own "
                                          "model.json, not from params.yaml.")
    sub.add_argument("--model", required=True, metavar="PATH",
                     help="a trained model folder (e.g. results/busi/models/unet/fold0, an ensembles/<name>/fold<k> folder) "
                          "or a .safetensors package")
    sub.add_argument("--input", required=True, metavar="PATH", help="an image, a folder of images, or a quoted glob")
    sub.add_argument("--out", required=True, metavar="DIR")
    sub.add_argument("--device", default="auto", help="auto (CUDA if present) | cpu | cuda | cuda:N")
    sub.add_argument("--batch-size", type=int, default=16)
    sub.add_argument("--threshold", type=float, default=0.5, help="lesion probability threshold")
    sub.add_argument("--log", metavar="PATH", help="also write this command's messages to PATH")
    sub.set_defaults(handler=cmd_predict)
    sub = commands.add_parser("package", help="pack a trained model (network, cascade or ensemble) into one .safetensors file")
    sub.add_argument("--model", required=True, metavar="DIR", help="a trained fold folder under results/")
    sub.add_argument("--out", required=True, metavar="FILE.safetensors")
    sub.add_argument("--log", metavar="PATH", help="also write this command's messages to PATH")
    sub.set_defaults(handler=cmd_package)
    sub = commands.add_parser("demo", help="local web demo: pick a trained model and an image, see mask and class probabilities")
    sub.add_argument("--results", default="results", metavar="DIR", help="the results folder whose trained models are offered")
    sub.add_argument("--host", default="127.0.0.1", help="interface to bind (default: this machine only)")
    sub.add_argument("--port", type=int, default=7860)
    sub.add_argument("--device", default="auto", help="auto (CUDA if present) | cpu | cuda | cuda:N")
    sub.add_argument("--max-upload-mb", type=float, default=20.0, help="largest image file accepted")
    sub.add_argument("--log", metavar="PATH", help="also write this command's messages to PATH")
    sub.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from busflow.errors import BusflowError

    with _teed_to(args.log):
        started = time.perf_counter()
        try:
            args.handler(args)
        except (BusflowError, FileNotFoundError, ValueError) as error:
            print(f"busflow {args.command}: error: {error}", file=sys.stderr)
            return 2
        print(f"busflow {args.command}: done in {time.perf_counter() - started:.1f}s", file=sys.stderr)
        return 0


class _Tee(io.TextIOBase):
    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
            stream.flush()
        return len(text)


@contextlib.contextmanager
def _teed_to(log_path: str | None) -> Iterator[None]:
    """Copy stdout and stderr into ``log_path`` (the orchestrators' per-job log) while still printing them."""
    if not log_path:
        yield
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as log:
        with contextlib.redirect_stdout(_Tee(sys.stdout, log)), contextlib.redirect_stderr(_Tee(sys.stderr, log)):
            yield


if __name__ == "__main__":
    sys.exit(main())
