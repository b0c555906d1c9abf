# The ablation grid (ablation.lr x ablation.options of ablation.model) as wildcards: one training and one
# evaluation job per cell and fold, written beside the model under models/<model>/ablation/<cell>/.
rule train_ablation:
    input:
        arrays=rules.preprocess.output.arrays,
        folds=rules.split.output.folds,
        audit=rules.audit.output.audit,
        init=f"{RESULTS}/models/{{model}}/{INIT_DIR}",
    output:
        multiext(f"{ABLATION_CELL}/", *TRAIN_OUTPUTS),
        f"{ABLATION_CELL}/{TRAIN_LIVE_METRICS}",
        directory(f"{ABLATION_CELL}/{TRAIN_PLOTS}"),
    wildcard_constraints:
        model=ABLATION["model"] or "^$",
        variant="|".join(ABLATION["options"]) or "^$",
        lr=r"[0-9.e+-]+",
    params:
        params_yaml=PARAMS_FILE,
        # Declared so that editing the model or this cell's options reruns only the cell's chain.
        cell=ablation_params,
        seed=config["seed"],
        device=config["device"],
        accelerator=ACCELERATOR,
        out=lambda wildcards: ablation_dir(RUN, wildcards.model, wildcards.lr, wildcards.variant, wildcards.fold),
    threads: 1
    priority: training_priority
    resources:
        gpu=GPU_JOB,
        gpu_percent=GPU_PERCENT,
    conda:
        "../envs/busflow.yaml"
    log:
        f"{RESULTS}/logs/train/{{model}}_ablation_lr{{lr}}_{{variant}}_fold{{fold}}.log",
    shell:
        "busflow train --params {params.params_yaml} --model {wildcards.model} --fold {wildcards.fold} "
        "--lr {wildcards.lr} --variant {wildcards.variant} --arrays {input.arrays} --folds {input.folds} --init {input.init} "
        "--out {params.out} --gpus {resources.gpu} --log {log}"


rule evaluate_ablation:
    input:
        arrays=rules.preprocess.output.arrays,
        predictions=f"{ABLATION_CELL}/predictions.npz",
    output:
        multiext(f"{ABLATION_CELL}/", *EVALUATE_OUTPUTS),
    wildcard_constraints:
        model=ABLATION["model"] or "^$",
        variant="|".join(ABLATION["options"]) or "^$",
        lr=r"[0-9.e+-]+",
    params:
        params_yaml=PARAMS_FILE,
        evaluate=config["evaluate"],
        out=lambda wildcards: ablation_dir(RUN, wildcards.model, wildcards.lr, wildcards.variant, wildcards.fold),
    conda:
        "../envs/busflow.yaml"
    log:
        f"{RESULTS}/logs/evaluate/{{model}}_ablation_lr{{lr}}_{{variant}}_fold{{fold}}.log",
    shell:
        "busflow evaluate --params {params.params_yaml} --model {wildcards.model} --fold {wildcards.fold} "
        "--arrays {input.arrays} --predictions {input.predictions} --out {params.out} --log {log}"
