rule report:
    input:
        report_inputs,
    output:
        [report_file(name) for name in REPORT_FILES],
        [directory(f"{RESULTS}/report/{name}") for name in REPORT_DIRS],
    params:
        params_yaml=PARAMS_FILE,
        models=MODELS,
        folds=FOLDS,
        cascades=list(CASCADES),
        ensembles=list(ENSEMBLES),
        leakage=LEAKAGE_MODELS,
        leakage_seeds=LEAKAGE_SEEDS,
        reproduces=config["reproduces"],
        bootstrap=config["evaluate"]["bootstrap"],
        reference=config["evaluate"]["reference_model"],
        seed=config["seed"],
        results=lambda wildcards, input: run_dir_of(input[0], DATA_FILES["index"]),  # input[0] is data/index.csv
        out=lambda wildcards, output: str(Path(output[0]).parent),
    conda:
        "../envs/busflow.yaml"
    log:
        f"{RESULTS}/logs/report.log",
    shell:
        "busflow report --params {params.params_yaml} --results {params.results} --out {params.out} --log {log}"
