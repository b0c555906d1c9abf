# busflow: breast-ultrasound deep learning, data -> patient-level split -> models -> cascade, ensembles -> evaluation, external validation -> report.
# Wiring only: every rule runs exactly one `busflow <stage>` command (stage logic lives in src/busflow).
# The same DAG is described for DVC in dvc.yaml; tests/test_dag_parity.py keeps the two identical.
from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/split.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/cascade.smk"
include: "workflow/rules/ensemble.smk"
include: "workflow/rules/external.smk"
include: "workflow/rules/ablation.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        report_outputs(),
        pretrain_outputs(),
    default_target: True
