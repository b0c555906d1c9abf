# External validation in one job (all datasets, models and folds): one output folder that always exists
# lets dvc.yaml declare it even when params.yaml names no external dataset.
rule external:
    input:
        arrays=rules.preprocess.output.arrays,
        trained=[f"{fold_dir(RUN, model, fold)}/{name}" for model in EXTERNAL["models"] for fold in FOLDS
                 for name in ("weights.pt", "model.json", "predictions.npz")],
    output:
        directory(f"{RESULTS}/external"),
    params:
        params_yaml=PARAMS_FILE,
        # Declared so that editing the external datasets' sources, preprocessing or evaluation reruns this job.
        external=EXTERNAL,
        sources={dataset: config["data"][dataset] for dataset in EXTERNAL["datasets"]},
        preprocess=config["preprocess"],
        evaluate=config["evaluate"],
        device=config["device"],
        predict_precision=config["accelerator"]["predict_precision"],
        models=lambda wildcards, input: f"{run_dir_of(input.arrays, DATA_FILES['arrays'])}/models",
    threads: 1
    resources:
        gpu=GPU_JOB,
        gpu_percent=GPU_PERCENT,
    conda:
        "../envs/busflow.yaml"
    log:
        f"{RESULTS}/logs/external.log",
    shell:
        "busflow external --params {params.params_yaml} --arrays {input.arrays} --models {params.models} "
        "--out {output} --gpus {resources.gpu} --log {log}"
