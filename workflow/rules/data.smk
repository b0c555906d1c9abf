rule download:
    output:
        directory(f"{RESULTS}/raw"),
    params:
        params_yaml=PARAMS_FILE,
        dataset=DATASET,
        source=config["data"][DATASET],
        seed=config["seed"],
    conda:
        "../envs/busflow.yaml"
    log:
        f"{RESULTS}/logs/download.log",
    shell:
        "busflow download --params {params.params_yaml} --out {output} --log {log}"


rule preprocess:
    input:
        raw=rules.download.output[0],
    output:
        index=f"{RESULTS}/data/index.csv",
        arrays=f"{RESULTS}/data/arrays.npz",
        skipped=f"{RESULTS}/data/skipped.csv",
    params:
        params_yaml=PARAMS_FILE,
        preprocess=config["preprocess"],
        on_bad_sample=config["data"]["on_bad_sample"],
    conda:
        "../envs/busflow.yaml"
    log:
        f"{RESULTS}/logs/preprocess.log",
    shell:
        "busflow preprocess --params {params.params_yaml} --raw {input.raw} --index {output.index} --arrays {output.arrays} --skipped {output.skipped} --log {log}"
