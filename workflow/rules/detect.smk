# Detection (Tables 2-3): torchvision R-CNNs on each backbone's pyramid; upstream variants start
# from a pretrain_det* run on the same images (its best.pt is named in the run config).


rule detect:
    input:
        config=run_config_file(RUN),
        data=ready_marker("{dataset}"),
        pretrain=pretrain_metrics,
    output:
        metrics=metrics_file(RUN),
    wildcard_constraints:
        method="det_[a-z_]+",
    params:
        launch=launcher("detect"),
        out=lambda wc: run_dir(planned(wc).run_id),
        execution=run_execution_file,
    log:
        job_log(RUN),
    threads: config["threads_per_run"]
    resources:
        **stage_resources("detect"),
    conda:
        "../../envs/relvit.yaml"
    container:
        CONTAINER
    shell:
        "{params.launch} detect --config {input.config:q} --execution {params.execution:q}"
        " --out {params.out:q} --threads {threads} --no-progress --replace-changed"
        " --record-failure > {log:q} 2>&1"
