# Numbers you can defend: `relvit compare` puts every planned cell of Tables 1-3 beside the
# paper's number with a verdict and its provenance; `compare_verdict` then fails the workflow
# when a comparable cell is out of tolerance (stand-in cells, as in the smoke tier, never fail).
# Two jobs, because Snakemake deletes the outputs of a failed job: compare.{md,csv} stay.
# `relvit figures` draws a bar chart per table and the training curves of every run, in one job
# (matplotlib costs ~0.7 s to import).
# Figures read the same inputs as compare and do not wait on it, so they exist when it fails.
import shlex

COMPARE = config.get("compare") or {}
IMPROVEMENTS_CSV = os.path.relpath(os.path.join(workflow.basedir, layout.PRINTED_IMPROVEMENTS))
FIGURE_TABLES = ([1] if TABLE1_RUNS else []) + [int(table) for table in DETECTION_TABLES]
CURVE_GROUPS = sorted({run_id.rsplit("/", 1)[0] for run_id in RUNS})
CELL_INPUTS = {
    "configs": [run_config_file(run_id) for run_id in TABLE1_RUNS],
    "table1": [metrics_file(run_id) for run_id in TABLE1_RUNS],
    "plan": rules.detection_plan.output if DETECTION_TABLES else [],
    "detections": [metrics_file(run_id) for run_id in DETECTIONS],
    "detection_configs": [run_config_file(run_id) for run_id in DETECTIONS],
}
# the verdict's criterion, where the workflow config sets it (else the CLI's defaults)
CRITERION = shlex.join(f"--{key}={COMPARE[key]}" for key in ("sigmas", "tolerance")
                       if key in COMPARE)


rule compare:
    input:
        **CELL_INPUTS,
    output:
        md=report(f"{RESULTS}/tables/compare.md", caption="../report/compare.rst",
                  category="Comparison"),
        csv=report(f"{RESULTS}/tables/compare.csv", caption="../report/compare.rst",
                   category="Comparison"),
    params:
        stem=lambda wildcards, output: os.path.splitext(output.md)[0],
        tier=config["tier"],
        paper=PAPER_CSV,
        improvements=IMPROVEMENTS_CSV,
        plan=lambda wildcards, input: shlex.join(["--plan", *input.plan]) if input.plan else "",
        criterion=CRITERION,
    log:
        f"{RESULTS}/logs/compare.log",
    resources:
        **stage_resources("report"),
    conda:
        "../../envs/relvit.yaml"
    container:
        CONTAINER
    shell:
        "relvit compare --out {params.stem:q} --tier {params.tier:q} --paper {params.paper:q}"
        " --improvements {params.improvements:q}"
        " {params.plan} {params.criterion} --no-fail {input.configs:q} {input.table1:q}"
        " > {log:q} 2>&1"


localrules:
    compare_verdict,  # reads one small CSV


rule compare_verdict:
    input:
        rules.compare.output.csv,
    output:
        f"{RESULTS}/tables/compare.verdict",
    log:
        f"{RESULTS}/logs/compare-verdict.log",
    run:
        from relvit.report.compare import write_verdict

        write_verdict(input[0], output[0], log[0])


rule figures:
    input:
        **CELL_INPUTS,
        runs=[metrics_file(run_id) for run_id in RUNS],
    output:
        tables=[report(f"{RESULTS}/figures/table{table}.png", caption="../report/figures.rst",
                       category="Figures", subcategory="Tables vs paper")
                for table in FIGURE_TABLES],
        pdfs=[f"{RESULTS}/figures/table{table}.pdf" for table in FIGURE_TABLES],
        curves=[report(f"{RESULTS}/figures/curves/{group}.png", caption="../report/curves.rst",
                       category="Figures", subcategory="Training curves", labels={"runs": group})
                for group in CURVE_GROUPS],
    params:
        out=lambda wildcards, output: os.path.dirname(output.tables[0]),
        tier=config["tier"],
        paper=PAPER_CSV,
        plan=lambda wildcards, input: shlex.join(["--plan", *input.plan]) if input.plan else "",
        criterion=CRITERION,  # the red edges follow compare's verdicts
    log:
        f"{RESULTS}/logs/figures.log",
    resources:
        **stage_resources("report"),
    conda:
        "../../envs/relvit.yaml"
    container:
        CONTAINER
    shell:
        "relvit figures --out {params.out:q} --tier {params.tier:q} --paper {params.paper:q}"
        " {params.plan} {params.criterion} {input.configs:q} {input.table1:q}"
        " --curves {input.runs:q}"
        " > {log:q} 2>&1"
