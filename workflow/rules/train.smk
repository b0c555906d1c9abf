rule train:
    input:
        arrays=rules.preprocess.output.arrays,
        folds=rules.split.output.folds,
        audit=rules.audit.output.audit,  # no model trains on a split that failed its leakage audit
    output:
        multiext(f"{RESULTS}/models/{{model}}/fold{{fold}}/", *TRAIN_OUTPUTS),
        f"{RESULTS}/models/{{model}}/fold{{fold}}/{TRAIN_LIVE_METRICS}",
        directory(f"{RESULTS}/models/{{model}}/fold{{fold}}/{TRAIN_PLOTS}"),
    wildcard_constraints:
        model="|".join(MODELS),
    params:
        params_yaml=PARAMS_FILE,
        # Declared so that editing this model's settings reruns only its chain.
        model=model_params,
        seed=config["seed"],
        device=config["device"],
        accelerator=ACCELERATOR,
        out=lambda wildcards: fold_dir(RUN, wildcards.model, wildcards.fold),
    threads: 1
    resources:
        gpu=GPU_JOB,
        gpu_percent=GPU_PERCENT,
    conda:
        "../envs/busflow.yaml"
    log:
        f"{RESULTS}/logs/train/{{model}}_fold{{fold}}.log",
    shell:
        "busflow train --params {params.params_yaml} --model {wildcards.model} --fold {wildcards.fold} "
        "--arrays {input.arrays} --folds {input.folds} --out {params.out} --log {log}"


# The leakage study: the same model and settings on the image-level split (deliberately leaky).
use rule train as train_leaky with:
    input:
        arrays=rules.preprocess.output.arrays,
        folds=rules.split.output.leaky,
        audit=rules.audit.output.audit,
    output:
        multiext(f"{RESULTS}/models/{{model}}/{LEAKY_SPLIT}/fold{{fold}}/", *TRAIN_OUTPUTS),
        f"{RESULTS}/models/{{model}}/{LEAKY_SPLIT}/fold{{fold}}/{TRAIN_LIVE_METRICS}",
        directory(f"{RESULTS}/models/{{model}}/{LEAKY_SPLIT}/fold{{fold}}/{TRAIN_PLOTS}"),
    wildcard_constraints:
        model="|".join(LEAKAGE_MODELS) or "^$",
    params:
        params_yaml=PARAMS_FILE,
        model=model_params,
        seed=config["seed"],
        device=config["device"],
        accelerator=ACCELERATOR,
        out=lambda wildcards: fold_dir(RUN, wildcards.model, wildcards.fold, LEAKY_SPLIT),
    log:
        f"{RESULTS}/logs/train/{{model}}_{LEAKY_SPLIT}_fold{{fold}}.log",
