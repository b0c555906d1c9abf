# Where each model's encoder starts: scratch, or a verified weight file (recorded with its sha256, and linked).
# Local rules: a hash and, for a missing catalogue checkpoint, a download, which a cluster's login node can
# make and its compute nodes often cannot.
localrules:
    init_weights,
    init_weights_cascade,


# Self-supervised encoders of the pretrain section, on each fold's training and validation images.
rule pretrain:
    input:
        arrays=rules.preprocess.output.arrays,
        folds=rules.split.output.folds,
        audit=rules.audit.output.audit,
    output:
        directory(f"{PRETRAINED}/fold{{fold}}"),
    params:
        params_yaml=PARAMS_FILE,
        pretrain=config["pretrain"],
        seed=config["seed"],
        device=config["device"],
        deterministic=config["accelerator"]["deterministic"],
    threads: 1
    resources:
        gpu=GPU_JOB,
        gpu_percent=GPU_PERCENT,
    conda:
        "../envs/busflow.yaml"
    log:
        f"{RESULTS}/logs/pretrain/fold{{fold}}.log",
    shell:
        "busflow pretrain --params {params.params_yaml} --fold {wildcards.fold} --arrays {input.arrays} "
        "--folds {input.folds} --out {output} --gpus {resources.gpu} --log {log}"


rule init_weights:
    input:
        init_weight_file,
    output:
        directory(f"{RESULTS}/models/{{model}}/{INIT_DIR}"),
    wildcard_constraints:
        model="|".join(MODELS),
    params:
        params_yaml=PARAMS_FILE,
        init=init_params,
        pretrained=PRETRAINED,
    conda:
        "../envs/busflow.yaml"
    log:
        f"{RESULTS}/logs/init/{{model}}.log",
    shell:
        "busflow init-weights --params {params.params_yaml} --model {wildcards.model} --pretrained {params.pretrained} "
        "--out {output} --log {log}"


use rule init_weights as init_weights_cascade with:
    wildcard_constraints:
        model=CASCADE_NAMES,


rule train:
    input:
        arrays=rules.preprocess.output.arrays,
        folds=rules.split.output.folds,
        audit=rules.audit.output.audit,  # no model trains on a split that failed its leakage audit
        init=f"{RESULTS}/models/{{model}}/{INIT_DIR}",
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
    priority: training_priority
    resources:
        gpu=GPU_JOB,
        gpu_percent=GPU_PERCENT,
    conda:
        "../envs/busflow.yaml"
    log:
        f"{RESULTS}/logs/train/{{model}}_fold{{fold}}.log",
    shell:
        "busflow train --params {params.params_yaml} --model {wildcards.model} --fold {wildcards.fold} "
        "--arrays {input.arrays} --folds {input.folds} --init {input.init} --out {params.out} --gpus {resources.gpu} --log {log}"


# The leakage study: the same model and settings on the image-level split (deliberately leaky), one run per
# seed of leakage.seeds the split was drawn with and per fold.
rule train_leaky:
    input:
        arrays=rules.preprocess.output.arrays,
        folds=rules.leaky_split.output.leaky,
        audit=rules.audit_leaky.output.audit,
        init=f"{RESULTS}/models/{{model}}/{INIT_DIR}",
    output:
        multiext(f"{LEAKY_RUN}/", *TRAIN_OUTPUTS),
        f"{LEAKY_RUN}/{TRAIN_LIVE_METRICS}",
        directory(f"{LEAKY_RUN}/{TRAIN_PLOTS}"),
    wildcard_constraints:
        model="|".join(LEAKAGE_MODELS) or "^$",
    params:
        params_yaml=PARAMS_FILE,
        model=model_params,
        seed=config["seed"],
        device=config["device"],
        accelerator=ACCELERATOR,
        out=lambda wildcards: fold_dir(RUN, wildcards.model, wildcards.fold, LEAKY_SPLIT, wildcards.split_seed),
    threads: 1
    priority: training_priority
    resources:
        gpu=GPU_JOB,
        gpu_percent=GPU_PERCENT,
    conda:
        "../envs/busflow.yaml"
    log:
        f"{RESULTS}/logs/train/{{model}}_{LEAKY_SPLIT}_seed{{split_seed}}_fold{{fold}}.log",
    shell:
        "busflow train --params {params.params_yaml} --model {wildcards.model} --fold {wildcards.fold} "
        "--split-seed {wildcards.split_seed} --arrays {input.arrays} --folds {input.folds} --init {input.init} "
        "--out {params.out} --gpus {resources.gpu} --log {log}"
