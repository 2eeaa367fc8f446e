# RelViT SSL pre-training (upstream): relations + absolute positions (method spec §3), with the
# mega-patch variant as method pretrain_mega, and pretrain_det* on detection images (Tables 2-3). Only metrics.json is declared: Snakemake never
# deletes best.pt / last.pt of a run that failed, so re-running resumes from the last epoch.


rule pretrain:
    input:
        config=run_config_file(RUN),
        data=data_marker,
    output:
        metrics=metrics_file(RUN),
    wildcard_constraints:
        method="pretrain(_mega|_det(_perm)?(_mega)?)?",
    params:
        launch=launcher("pretrain"),
        out=lambda wc: run_dir(planned(wc).run_id),
        execution=run_execution_file,
    log:
        job_log(RUN),
    threads: config["threads_per_run"]
    # first among the ready jobs: the finetune and upstream detection runs wait on them, and the
    # smoke run's last job had been a detection whose pretraining started late (docs/performance.md)
    priority: 1
    resources:
        **stage_resources("pretrain"),
    conda:
        "../../envs/relvit.yaml"
    container:
        CONTAINER
    shell:
        "{params.launch} pretrain --config {input.config:q} --execution {params.execution:q}"
        " --out {params.out:q} --threads {threads} --no-progress --replace-changed"
        " --record-failure > {log:q} 2>&1"
