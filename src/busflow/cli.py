"""``busflow <stage>``: one command per pipeline stage. Every Snakemake rule and DVC stage runs one of them.

Each command reads params.yaml (validated) and the explicit input paths it is given, and writes exactly
the explicit output paths it is given, atomically. This module only parses arguments and dispatches: the
work of a stage command is ``busflow.stages.<stage>.run``; predict, package and demo live in ``busflow.serve``.
``weights`` and ``cross-matrix`` (which joins several runs' reports) work outside the DAG.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from busflow import __version__
from busflow.config import load_params, params_sha256
from busflow.errors import BusflowError


@dataclass(frozen=True)
class Stage:
    """A command that runs one DAG node: ``busflow.stages.<module>.run(params, **paths, **options)``."""

    module: str
    paths: tuple[str, ...]  # required --<path> arguments, passed on as Path keyword arguments
    options: tuple[str, ...] = ()  # further arguments passed on as they were parsed
    check_registry: bool = True  # validate the models' architectures against the registry (imports torch)
    reads_params: bool = True
    params_path: bool = False  # also pass the params file's path (``params_path``), e.g. to read its comments

    def __call__(self, args: argparse.Namespace) -> None:
        stage = importlib.import_module(f"busflow.stages.{self.module}")
        arguments: dict[str, Any] = {name: Path(getattr(args, name)) for name in self.paths}
        arguments.update({name: getattr(args, name) for name in self.options})
        if self.params_path:
            arguments["params_path"] = Path(args.params)
        if self.reads_params:
            stage.run(load_params(args.params, check_registry=self.check_registry), **arguments)
        else:
            stage.run(**arguments)


def cmd_validate(args: argparse.Namespace) -> None:
    params = load_params(args.params)
    print(f"{args.params}: valid (dataset {params['dataset']}, models {', '.join(params['train']['models'])}, "
          f"sha256 {params_sha256(params)[:12]})")


def cmd_queue_ablation(args: argparse.Namespace) -> None:
    from busflow.stages import ablation

    ablation.run(load_params(args.params), source=args.params, dry_run=args.dry_run)


def cmd_predict(args: argparse.Namespace) -> None:
    from busflow.serve.predict import predict_images

    table = predict_images(Path(args.model), args.input, Path(args.out), device=args.device, batch_size=args.batch_size,
                           threshold=args.threshold, pixel_spacing_mm=args.pixel_spacing_mm,
                           pixel_spacing_csv=Path(args.pixel_spacing_csv) if args.pixel_spacing_csv else None)
    print(f"{len(table)} image(s) predicted; masks, overlays and predictions.csv in {args.out}")


def cmd_package(args: argparse.Namespace) -> None:
    from busflow.serve.predictors import package_model

    size = package_model(Path(args.model), Path(args.out))
    print(f"{args.model} packaged into {args.out} ({size / 1e6:.1f} MB); use it with `busflow predict --model {args.out}`")


def cmd_demo(args: argparse.Namespace) -> None:
    from busflow.serve.demo import launch

    launch(Path(args.results), host=args.host, port=args.port, device=args.device, max_upload_mb=args.max_upload_mb)


Commands = argparse._SubParsersAction  # what add_subparsers returns


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="busflow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"busflow {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_stage_commands(commands)
    _add_serving_commands(commands)
    _add_weights_commands(commands)
    _add_study_commands(commands)
    return parser


def _add_stage_commands(commands: Commands) -> None:
    """validate, and one command per DAG node: they read params.yaml and explicit --<path> arguments."""

    def command(name: str, handler: Callable[[argparse.Namespace], None], help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
        sub.add_argument("--log", metavar="PATH", help="also write this command's messages to PATH")
        for path in handler.paths if isinstance(handler, Stage) else ():
            sub.add_argument(f"--{path}", required=True, metavar="PATH")
        sub.set_defaults(handler=handler)
        return sub

    def granted_gpus(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--gpus", type=int, default=0, metavar="N",
                         help="GPUs the scheduler granted this job (Snakemake passes its gpu resource); with 1 the job "
                              "stops if it finds no GPU instead of computing on the CPU")

    def model_and_fold(sub: argparse.ArgumentParser, *, model: bool = True, model_help: str | None = None) -> None:
        if model:
            sub.add_argument("--model", required=True, help=model_help)
        sub.add_argument("--fold", required=True, type=int)

    command("validate", cmd_validate, "check params.yaml against the schema and the model registry")
    command("download", Stage("download", ("out",), check_registry=False),
            "create the raw dataset folder (synthetic phantoms, or a verified download)")
    command("preprocess", Stage("preprocess", ("raw", "index", "arrays", "skipped"), check_registry=False),
            "index the raw folder; grayscale, resize, normalise, union masks")
    command("group", Stage("group", ("index", "groups", "links"), check_registry=False),
            "group images that must stay together: patients and near-duplicate frames")
    command("split", Stage("split", ("index", "groups", "folds", "conflicts"), check_registry=False),
            "grouped, stratified split of the configured protocol")
    command("leaky-split", Stage("leaky_split", ("index", "groups", "leaky"), check_registry=False),
            "the leakage study's image-level folds (ignoring groups), one draw per seed of leakage.seeds")
    sub = command("audit", Stage("audit", ("index", "arrays", "folds", "out", "counts"), ("leakage_study",), reads_params=False),
                  "fail if any group, patient or identical image crosses a split boundary; count roles")
    sub.add_argument("--leakage-study", action="store_true",
                     help="the folds are the leakage study's image-level split: record its crossings, do not fail")
    sub = command("pretrain", Stage("pretrain", ("arrays", "folds", "out"), ("fold", "gpus")),
                  "pretrain every encoder of the pretrain section on one fold's training images (self-supervised, no labels)")
    model_and_fold(sub, model=False)
    granted_gpus(sub)
    sub = command("init-weights", Stage("init_weights", ("pretrained", "out"), ("model",), check_registry=False),
                  "record where one model's encoder starts (scratch, or a verified weight file, fetched if a catalogue name)")
    sub.add_argument("--model", required=True, help="a model of models:, or a cascade's name")
    sub = command("train", Stage("train", ("arrays", "folds", "init", "out"), ("model", "fold", "lr", "variant", "split_seed", "gpus")),
                  "train one model on one fold; predict its test part")
    model_and_fold(sub)
    granted_gpus(sub)
    sub.add_argument("--split-seed", type=int, help="leakage study: fold --fold of the image-level split drawn with this seed")
    sub.add_argument("--lr", type=float, help="ablation cell: this learning rate (with --variant)")
    sub.add_argument("--variant", help="ablation cell: this option set of ablation.options (with --lr)")
    sub = command("cascade", Stage("cascade", ("arrays", "folds", "segmenter", "init", "out"), ("model", "fold", "gpus")),
                  "crop predicted lesions and train/test one cascade's classifier on one fold")
    model_and_fold(sub, model_help="a cascade of cascades: (its name)")
    granted_gpus(sub)
    command("ensemble", Stage("ensemble", ("arrays", "folds", "models", "out"), check_registry=False),
            "combine and evaluate the predictions of trained models: every ensemble, every fold")
    sub = command("queue-ablation", cmd_queue_ablation,
                  "queue the ablation grid as DVC experiments (dvc exp run --queue -S ...), one per cell")
    sub.add_argument("--dry-run", action="store_true", help="print the dvc commands without running them")
    sub = command("external", Stage("external", ("arrays", "models", "out"), ("gpus",)),
                  "external validation: test the fold models on every image of other datasets")
    granted_gpus(sub)
    sub = command("evaluate", Stage("evaluate", ("arrays", "predictions", "out"), ("model", "fold"), check_registry=False),
                  "metrics of one model on one test fold")
    model_and_fold(sub)
    command("report", Stage("report", ("results", "out"), check_registry=False, params_path=True),
            "tables, figures and the HTML/Markdown report")


def _add_serving_commands(commands: Commands) -> None:
    """predict, package and demo: they read trained models, not params.yaml."""
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
    spacing = sub.add_mutually_exclusive_group()
    spacing.add_argument("--pixel-spacing-mm", type=float, metavar="MM",
                         help="side of one pixel in mm, the same for every image: adds lesion sizes in mm")
    spacing.add_argument("--pixel-spacing-csv", metavar="CSV",
                         help="a table of pixel spacings (columns image = file name, pixel_spacing_mm; empty when unknown)")
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


def cmd_cross_matrix(args: argparse.Namespace) -> None:
    from busflow.report.build import build_cross_matrix

    figure = build_cross_matrix(runs=[Path(run) for run in args.runs], out_dir=Path(args.out))
    print(f"cross-dataset matrix of {len(args.runs)} run(s) written to {Path(args.out) / 'tables'} and {figure}")


def _add_study_commands(commands: Commands) -> None:
    """cross-matrix: joins the reports of several runs, outside any run's DAG."""
    sub = commands.add_parser("cross-matrix", help="the cross-dataset matrix (trained on A x tested on B) of several runs' reports",
                              description="Join the one-row cross-dataset tables of several runs (each trained on one "
                                          "dataset, with external.datasets set) into the full matrix: "
                                          "tables/cross_dataset.csv and figures/cross_dataset.png under --out.")
    sub.add_argument("--runs", required=True, nargs="+", metavar="DIR", help="run folders, e.g. results/busi results/busbra")
    sub.add_argument("--out", required=True, metavar="DIR")
    sub.add_argument("--log", metavar="PATH", help="also write this command's messages to PATH")
    sub.set_defaults(handler=cmd_cross_matrix)


def cmd_weights_fetch(args: argparse.Namespace) -> None:
    from busflow.stages import weights

    print(weights.fetch(args.name, None if args.dest is None else Path(args.dest), sha256=args.sha256))


def cmd_weights_list(args: argparse.Namespace) -> None:
    from busflow.stages import weights

    print("\n".join(weights.listing(None if args.dest is None else Path(args.dest))))


def _add_weights_commands(commands: Commands) -> None:
    """weights fetch and weights list: the pretrained ImageNet checkpoints, outside the DAG."""
    group = commands.add_parser("weights", help="fetch or list the pretrained ImageNet checkpoints (sha256-verified)",
                                description="Pretrained ImageNet checkpoints of torchvision and timm, cached in --dest, "
                                            "else $BUSFLOW_WEIGHTS_DIR, else $TORCH_HOME/hub/checkpoints, else "
                                            "~/.cache/busflow/weights. $BUSFLOW_WEIGHTS_URL_BASE fetches <base>/<file> "
                                            "from a mirror instead of the official URL.")
    actions = group.add_subparsers(dest="action", required=True)
    sub = actions.add_parser("fetch", help="download (or reuse) one checkpoint, verify it, print its path")
    sub.add_argument("name", help="a catalogue name, e.g. torchvision_resnet50 (see `busflow weights list`)")
    sub.add_argument("--sha256", metavar="HEX", help="the file's sha256; required for a checkpoint without a pin")
    sub.set_defaults(handler=cmd_weights_fetch)
    sub = actions.add_parser("list", help="one line per checkpoint: family, library, sha256 pin, file, presence")
    sub.set_defaults(handler=cmd_weights_list)
    for sub in actions.choices.values():
        sub.add_argument("--dest", metavar="DIR", help="the cache folder")
        sub.add_argument("--log", metavar="PATH", help="also write this command's messages to PATH")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
