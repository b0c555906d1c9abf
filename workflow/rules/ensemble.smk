# All ensembles on all folds in one job: combining stored predictions takes seconds, and one output folder
# that always exists lets dvc.yaml declare it even when params.yaml defines no ensemble.
rule ensembles:
    input:
        arrays=rules.preprocess.output.arrays,
        folds=rules.split.output.folds,
        members=[f"{fold_dir(RUN, member, fold)}/predictions.npz"
                 for spec in ENSEMBLES.values() for member in spec["members"] for fold in FOLDS],
    output:
        directory(f"{RESULTS}/ensembles"),
    params:
        params_yaml=PARAMS_FILE,
        # Declared so that editing an ensemble or the evaluation settings reruns this job.
        ensembles=ENSEMBLES,
        evaluate=config["evaluate"],
        models=lambda wildcards, input: f"{run_dir_of(input.folds, SPLIT_FILES['folds'])}/models",
    conda:
        "../envs/busflow.yaml"
    log:
        f"{RESULTS}/logs/ensembles.log",
    shell:
        "busflow ensemble --params {params.params_yaml} --arrays {input.arrays} --folds {input.folds} "
        "--models {params.models} --out {output} --log {log}"
