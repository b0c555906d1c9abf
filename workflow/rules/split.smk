rule split:
    input:
        index=rules.preprocess.output.index,
    output:
        groups=f"{RESULTS}/split/groups.csv",
        folds=f"{RESULTS}/split/folds.csv",
    params:
        params_yaml=PARAMS_FILE,
        split=config["split"],
        seed=config["seed"],
    conda:
        "../envs/busflow.yaml"
    log:
        f"{RESULTS}/logs/split.log",
    shell:
        "busflow split --params {params.params_yaml} --index {input.index} --groups {output.groups} --folds {output.folds} --log {log}"
