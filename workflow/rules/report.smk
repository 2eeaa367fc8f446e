# Gather run directories into the paper's tables. The run configs go in too, so the table has a
# row for every planned cell.


rule table1:
    input:
        configs=[run_config_file(run_id) for run_id in RUNS],
        metrics=[metrics_file(run_id) for run_id in RUNS],
    output:
        md=f"{RESULTS}/tables/table1.md",
        tex=f"{RESULTS}/tables/table1.tex",
    params:
        stem=lambda wildcards, output: os.path.splitext(output.md)[0],
        tier=config["tier"],
    log:
        f"{RESULTS}/logs/table1.log",
    conda:
        "../../envs/relvit.yaml"
    shell:
        "relvit report --table1 {params.stem:q} --tier {params.tier:q} {input:q} > {log:q} 2>&1"
