rule evaluate:
    input:
        arrays=rules.preprocess.output.arrays,
        predictions=f"{RESULTS}/models/{{model}}/fold{{fold}}/predictions.npz",
    output:
        multiext(f"{RESULTS}/models/{{model}}/fold{{fold}}/", *EVALUATE_OUTPUTS),
    wildcard_constraints:
        model="|".join(MODELS),
    params:
        params_yaml=PARAMS_FILE,
        evaluate=config["evaluate"],
        out=lambda wildcards: fold_dir(RUN, wildcards.model, wildcards.fold),
    conda:
        "../envs/busflow.yaml"
    log:
        f"{RESULTS}/logs/evaluate/{{model}}_fold{{fold}}.log",
    shell:
        "busflow evaluate --params {params.params_yaml} --model {wildcards.model} --fold {wildcards.fold} "
        "--arrays {input.arrays} --predictions {input.predictions} --out {params.out} --log {log}"


use rule evaluate as evaluate_cascade with:
    wildcard_constraints:
        model=CASCADE_NAMES,


use rule evaluate as evaluate_leaky with:
    input:
        arrays=rules.preprocess.output.arrays,
        predictions=f"{LEAKY_RUN}/predictions.npz",
    output:
        multiext(f"{LEAKY_RUN}/", *EVALUATE_OUTPUTS),
    wildcard_constraints:
        model="|".join(LEAKAGE_MODELS) or "^$",
    params:
        params_yaml=PARAMS_FILE,
        evaluate=config["evaluate"],
        out=lambda wildcards: fold_dir(RUN, wildcards.model, wildcards.fold, LEAKY_SPLIT, wildcards.split_seed),
    log:
        f"{RESULTS}/logs/evaluate/{{model}}_{LEAKY_SPLIT}_seed{{split_seed}}_fold{{fold}}.log",

