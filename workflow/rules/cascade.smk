# Each cascade of cascades: segment -> crop -> classify, one job per cascade and fold.
rule cascade:
    input:
        arrays=rules.preprocess.output.arrays,
        folds=rules.split.output.folds,
        audit=rules.audit.output.audit,
        segmenter=lambda wildcards: f"{RESULTS}/models/{CASCADES[wildcards.model]['segmenter']}/fold{wildcards.fold}/predictions.npz",
        init=f"{RESULTS}/models/{{model}}/{INIT_DIR}",
    output:
        multiext(f"{RESULTS}/models/{{model}}/fold{{fold}}/", *TRAIN_OUTPUTS),
        f"{RESULTS}/models/{{model}}/fold{{fold}}/{TRAIN_LIVE_METRICS}",
        directory(f"{RESULTS}/models/{{model}}/fold{{fold}}/{TRAIN_PLOTS}"),
    wildcard_constraints:
        model=CASCADE_NAMES,
    params:
        params_yaml=PARAMS_FILE,
        # Declared per cascade, so that editing one cascade reruns only its jobs.
        cascade=lambda wildcards: CASCADES[wildcards.model],
        threshold=config["evaluate"]["threshold"],
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
        f"{RESULTS}/logs/cascade/{{model}}_fold{{fold}}.log",
    shell:
        "busflow cascade --params {params.params_yaml} --model {wildcards.model} --fold {wildcards.fold} --arrays {input.arrays} "
        "--folds {input.folds} --segmenter {input.segmenter} --init {input.init} --out {params.out} --gpus {resources.gpu} --log {log}"
