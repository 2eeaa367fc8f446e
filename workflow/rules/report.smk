# Gather run directories into the paper's tables. The run configs go in too, so Table 1 has a
# row for every planned cell; Tables 2-3 follow the plan file of their rows.
import json


rule table1:
    input:
        configs=[run_config_file(run_id) for run_id in TABLE1_RUNS],
        metrics=[metrics_file(run_id) for run_id in TABLE1_RUNS],
    output:
        md=report(f"{RESULTS}/tables/table1.md", caption="../report/tables.rst", category="Tables"),
        tex=report(f"{RESULTS}/tables/table1.tex", caption="../report/tables.rst",
                   category="Tables"),
    params:
        stem=lambda wildcards, output: os.path.splitext(output.md)[0],
        tier=config["tier"],
        paper=PAPER_CSV,
    log:
        f"{RESULTS}/logs/table1.log",
    resources:
        **stage_resources("report"),
    conda:
        "../../envs/relvit.yaml"
    container:
        CONTAINER
    shell:
        "relvit report --table1 {params.stem:q} --tier {params.tier:q} --paper {params.paper:q}"
        " {input:q} > {log:q} 2>&1"


localrules:
    detection_plan,  # writes one small JSON: not worth a cluster job


rule detection_plan:
    output:
        f"{RESULTS}/tables/detection-plan.json",
    params:
        rows=lambda wildcards: detection_plan_rows(config, PAPER_CSV),
    log:
        f"{RESULTS}/logs/detection-plan.log",
    run:
        with open(output[0], "w") as handle:
            json.dump(params.rows, handle, indent=1)


rule detection_tables:
    input:
        plan=rules.detection_plan.output,
        metrics=[metrics_file(run_id) for run_id in DETECTIONS],
    output:
        [report(path, caption="../report/tables.rst", category="Tables")
         for path in expand(f"{RESULTS}/tables/table{{table}}.{{ext}}", table=DETECTION_TABLES,
                            ext=["md", "tex"])],
    params:
        out=lambda wildcards, output: os.path.dirname(output[0]),
        tier=config["tier"],
        paper=PAPER_CSV,
    log:
        f"{RESULTS}/logs/detection-tables.log",
    resources:
        **stage_resources("report"),
    conda:
        "../../envs/relvit.yaml"
    container:
        CONTAINER
    shell:
        "relvit report-detection --plan {input.plan:q} --out {params.out:q} --tier {params.tier:q}"
        " --paper {params.paper:q} > {log:q} 2>&1"
