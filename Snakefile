# relvit-repro: RelViT reproduction pipeline. Default: the smoke tier (config/config.yaml).
#   snakemake --cores 2                                  # Table 1 on the embedded digits
#   snakemake --cores 2 --configfile config/other.yaml   # another tier
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "config/schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/configs.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/classify.smk"
include: "workflow/rules/detect.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        rules.table1.output if TABLE1_RUNS else [],
        rules.detection_tables.output if DETECTION_TABLES else [],
    default_target: True
