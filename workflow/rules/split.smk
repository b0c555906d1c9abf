rule group:
    input:
        index=rules.preprocess.output.index,
    output:
        groups=f"{RESULTS}/{SPLIT_FILES['groups']}",
        links=f"{RESULTS}/{SPLIT_FILES['links']}",
    params:
        params_yaml=PARAMS_FILE,
        grouping=config["split"]["grouping"],
        duplicates=config["split"]["duplicates"],
        views=config["split"]["views"],
    threads: 2
    conda:
        "../envs/busflow.yaml"
    log:
        f"{RESULTS}/logs/group.log",
    shell:
        "busflow group --params {params.params_yaml} --index {input.index} --groups {output.groups} "
        "--links {output.links} --log {log}"


rule split:
    input:
        index=rules.preprocess.output.index,
        groups=rules.group.output.groups,
    output:
        folds=f"{RESULTS}/{SPLIT_FILES['folds']}",
        conflicts=f"{RESULTS}/{SPLIT_FILES['conflicts']}",
    params:
        params_yaml=PARAMS_FILE,
        split=config["split"],
        seed=config["seed"],
    conda:
        "../envs/busflow.yaml"
    log:
        f"{RESULTS}/logs/split.log",
    shell:
        "busflow split --params {params.params_yaml} --index {input.index} --groups {input.groups} "
        "--folds {output.folds} --conflicts {output.conflicts} --log {log}"


# The leakage study's image-level folds: a rule of its own, so that new seeds retrain only the leaky runs.
rule leaky_split:
    input:
        index=rules.preprocess.output.index,
        groups=rules.group.output.groups,
    output:
        leaky=f"{RESULTS}/{SPLIT_FILES['leaky']}",
    params:
        params_yaml=PARAMS_FILE,
        split=config["split"],
        seeds=LEAKAGE_SEEDS,
    conda:
        "../envs/busflow.yaml"
    log:
        f"{RESULTS}/logs/leaky_split.log",
    shell:
        "busflow leaky-split --params {params.params_yaml} --index {input.index} --groups {input.groups} "
        "--leaky {output.leaky} --log {log}"


rule audit:
    input:
        index=rules.preprocess.output.index,
        arrays=rules.preprocess.output.arrays,
        folds=rules.split.output.folds,
    output:
        audit=f"{RESULTS}/{SPLIT_FILES['audit']}",
        counts=f"{RESULTS}/{SPLIT_FILES['counts']}",
    params:
        params_yaml=PARAMS_FILE,
    conda:
        "../envs/busflow.yaml"
    log:
        f"{RESULTS}/logs/audit.log",
    shell:
        "busflow audit --params {params.params_yaml} --index {input.index} --arrays {input.arrays} "
        "--folds {input.folds} --out {output.audit} --counts {output.counts} --log {log}"


# The leakage study's split is audited on its own, so that its seeds never touch what the main models depend on.
rule audit_leaky:
    input:
        index=rules.preprocess.output.index,
        arrays=rules.preprocess.output.arrays,
        folds=rules.leaky_split.output.leaky,
    output:
        audit=f"{RESULTS}/{SPLIT_FILES['leaky_audit']}",
        counts=f"{RESULTS}/{SPLIT_FILES['leaky_counts']}",
    params:
        params_yaml=PARAMS_FILE,
    conda:
        "../envs/busflow.yaml"
    log:
        f"{RESULTS}/logs/audit_leaky.log",
    shell:
        "busflow audit --params {params.params_yaml} --index {input.index} --arrays {input.arrays} "
        "--folds {input.folds} --leakage-study --out {output.audit} --counts {output.counts} --log {log}"
