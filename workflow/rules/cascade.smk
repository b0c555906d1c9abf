rule cascade:
    input:
        arrays=rules.preprocess.output.arrays,
        folds=rules.split.output.folds,
        audit=rules.audit.output.audit,
        segmenter=f"{RESULTS}/models/{SEGMENTER}/fold{{fold}}/predictions.npz",
        init=f"{RESULTS}/models/{CASCADE}/{INIT_DIR}",
    output:
        multiext(f"{RESULTS}/models/{CASCADE}/fold{{fold}}/", *TRAIN_OUTPUTS),
        f"{RESULTS}/models/{CASCADE}/fold{{fold}}/{TRAIN_LIVE_METRICS}",
        directory(f"{RESULTS}/models/{CASCADE}/fold{{fold}}/{TRAIN_PLOTS}"),
    params:
        params_yaml=PARAMS_FILE,
        cascade=config["cascade"],
        threshold=config["evaluate"]["threshold"],
        seed=config["seed"],
        device=config["device"],
        accelerator=ACCELERATOR,
        out=lambda wildcards: fold_dir(RUN, CASCADE, wildcards.fold),
    threads: 1
    resources:
        gpu=GPU_JOB,
        gpu_percent=GPU_PERCENT,
    conda:
        "../envs/busflow.yaml"
    log:
        f"{RESULTS}/logs/cascade/fold{{fold}}.log",
    shell:
        "busflow cascade --params {params.params_yaml} --fold {wildcards.fold} --arrays {input.arrays} "
        "--folds {input.folds} --segmenter {input.segmenter} --init {input.init} --out {params.out} --gpus {resources.gpu} --log {log}"
