# Config validation and the path helpers every rule file uses.
import os
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake_interface_executor_plugins.settings import ExecMode

from busflow.config import cascade_settings, model_spec, validate_params
from busflow.gpus import GpuPlan, visible_gpu_count
from busflow.layout import INIT_DIR, DATA_FILES, EVALUATE_OUTPUTS, LEAKY_SPLIT, REPORT_DIRS, REPORT_FILES, SPLIT_FILES, TRAIN_LIVE_METRICS, TRAIN_OUTPUTS, TRAIN_PLOTS, ablation_dir, fold_dir, results_root, run_dir_of
from busflow.weights import init_source


def _params_file():
    """params.yaml, or the one complete params file given with --configfile (e.g. a preset)."""
    if workflow.config_settings.config:
        raise WorkflowError("--config overrides are not seen by the busflow commands: edit the params file, "
                            "or pass a complete params file with --configfile")
    files = [Path(f) for f in workflow.overwrite_configfiles]
    if len(files) > 1:
        raise WorkflowError("pass one --configfile: a complete params file such as config/presets/busi.yaml")
    if not files:
        return "params.yaml"
    relative = os.path.relpath(files[0])
    return relative if not relative.startswith("..") else str(files[0])


# Every command re-reads this file, so the workflow is driven by exactly its content (not a merge with params.yaml).
PARAMS_FILE = _params_file()
config.clear()
config.update(yaml.safe_load(Path(PARAMS_FILE).read_text(encoding="utf-8")))
validate_params(config, PARAMS_FILE, check_registry=False)  # schema (filling defaults) and cross-key rules

DATASET = config["dataset"]
RUN = config["run"]
RESULTS = results_root(RUN)
MODELS = config["train"]["models"]
FOLDS = config["train"]["folds"]
CASCADES = cascade_settings(config)  # name -> settings; empty: the run has no cascade
CASCADE_NAMES = "|".join(CASCADES) or "^$"  # wildcard constraint matching exactly the cascades' names
LEAKAGE_MODELS = config["leakage"]["models"]
LEAKAGE_SEEDS = config["leakage"]["seeds"]
# One leakage-study run: a model on one fold of the image-level split drawn with one seed.
LEAKY_RUN = f"{RESULTS}/models/{{model}}/{LEAKY_SPLIT}/seed{{split_seed}}/fold{{fold}}"
ENSEMBLES = config["ensembles"]
EXTERNAL = config["external"]
ABLATION = config["ablation"]
# Settings that change what training computes (jobs_per_gpu and checkpoint_every change no result: they rerun nothing).
ACCELERATOR = {key: config["accelerator"][key] for key in ("fast_path", "compile", "deterministic", "predict_precision")}
# GPU jobs (busflow.gpus.GpuPlan) ask for gpu=1 (a whole GPU on a cluster: --gpus=1) and gpu_percent =
# 100 / jobs_per_gpu; on one machine the workflow offers what its detected GPUs hold, unless --resources
# says otherwise, and each job takes a GPU slot of its own (busflow.train.device.job_device).
GPU_PLAN = GpuPlan(device=config["device"], gpus=visible_gpu_count(), jobs_per_gpu=config["accelerator"]["jobs_per_gpu"],
                   cluster=workflow.global_resources["_nodes"].value is not None)
GPU_JOB = GPU_PLAN.job_resources()["gpu"]
GPU_PERCENT = GPU_PLAN.job_resources()["gpu_percent"]
for _resource, _capacity in GPU_PLAN.machine_resources().items():
    if _resource not in workflow.global_resources:
        workflow.register_resource(_resource, _capacity)
if GPU_PLAN.on_gpu and workflow.exec_mode == ExecMode.DEFAULT:
    logger.info(GPU_PLAN.describe({name: workflow.global_resources[name].value for name in ("gpu", "gpu_percent")
                                   if name in workflow.global_resources}))


wildcard_constraints:
    fold=r"\d+",
    split_seed=r"\d+",


def model_files(model, fold, names, split="main", split_seed=None):
    return [f"{fold_dir(RUN, model, fold, split, split_seed)}/{name}" for name in names]


def model_params(wildcards):
    return config["models"][wildcards.model]


def training_priority(wildcards):
    """Longer training first (a model's epochs stand in for its cost), so that a short job, not a long one,
    finishes last while the other cores idle."""
    return int(model_spec(config, wildcards.model)["epochs"])


PRETRAINED = f"{RESULTS}/pretrain"


def pretrain_outputs():
    """Every fold's pretraining folder: in the DAG even when no model starts from it, as in dvc.yaml."""
    return [f"{PRETRAINED}/fold{fold}" for fold in FOLDS]


def init_weight_file(wildcards):
    """What a model starts from, as inputs of its init-weights job: a file of the user's, a catalogue checkpoint
    once it is in the weights folder (until then the job fetches it), or the folds' pretraining folders."""
    source = init_source(model_spec(config, wildcards.model)["init"], config["weights"])
    if source.pretrain is not None:
        return pretrain_outputs()
    if source.scratch or (source.checkpoint is not None and not source.path.exists()):
        return []
    return [str(source.path)]


def init_params(wildcards):
    return {"init": model_spec(config, wildcards.model)["init"], "weights": config["weights"]}


ABLATION_CELL = f"{RESULTS}/models/{{model}}/ablation/lr{{lr}}_{{variant}}/fold{{fold}}"


def ablation_params(wildcards):
    """The settings of one ablation cell (so that editing them reruns only that cell)."""
    return {"model": config["models"][wildcards.model], "lr": wildcards.lr,
            "options": ABLATION["options"][wildcards.variant]}


def report_outputs():
    return [f"{RESULTS}/report/{name}" for name in REPORT_FILES]


def report_inputs(wildcards):
    models = [*MODELS, *CASCADES]
    files = [rules.preprocess.output.index, rules.preprocess.output.arrays, rules.preprocess.output.skipped, *rules.group.output, *rules.split.output,
             *rules.leaky_split.output, *rules.audit.output,
             *rules.audit_leaky.output]
    for model in models:
        for fold in FOLDS:
            files += model_files(model, fold, (*TRAIN_OUTPUTS, TRAIN_LIVE_METRICS, *EVALUATE_OUTPUTS))
    files += [rules.ensembles.output[0], rules.external.output[0]]
    for lr in ABLATION["lr"]:
        for variant in ABLATION["options"]:
            for fold in FOLDS:
                cell = ablation_dir(RUN, ABLATION["model"], lr, variant, fold)
                files += [f"{cell}/{name}" for name in (*TRAIN_OUTPUTS, TRAIN_LIVE_METRICS, *EVALUATE_OUTPUTS)]
    for model in LEAKAGE_MODELS:
        for split_seed in LEAKAGE_SEEDS:
            for fold in FOLDS:
                files += model_files(model, fold, (*TRAIN_OUTPUTS, TRAIN_LIVE_METRICS, *EVALUATE_OUTPUTS), LEAKY_SPLIT, split_seed)
    return [*files, rules.download.output[0]]  # contact sheets show the original images


FIGURE_CAPTIONS = {
    "figures/roc.png": "roc.rst",
    "figures/metrics_bar.png": "metrics_bar.rst",
    "figures/overlays.png": "overlays.rst",
    "figures/training_curves.png": "training_curves.rst",
    "figures/confusion.png": "confusion.rst",
    "figures/leakage.png": "leakage.rst",
    "figures/calibration.png": "calibration.rst",
    "figures/pr.png": "pr.rst",
    "figures/failures.png": "failures.rst",
    "figures/ablation.png": "ablation.rst",
    "figures/comparisons.png": "comparisons.rst",
    "figures/cross_dataset.png": "cross_dataset.rst",
}


# `snakemake --report` shows the same summary as the report's first screen: the headline table and the key
# figures under "Summary", the other figures under "Figures".
SUMMARY_ITEMS = {"tables/leaderboard.csv": "leaderboard.rst", "figures/metrics_bar.png": "metrics_bar.rst",
                 "figures/roc.png": "roc.rst", "figures/overlays.png": "overlays.rst"}


def report_file(name):
    path = f"{RESULTS}/report/{name}"
    if name in SUMMARY_ITEMS:
        return report(path, caption=f"../report/{SUMMARY_ITEMS[name]}", category="Summary")
    if name in FIGURE_CAPTIONS:
        return report(path, caption=f"../report/{FIGURE_CAPTIONS[name]}", category="Figures")
    return path
