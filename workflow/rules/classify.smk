# Classification: RelViT fine-tuning from a pretrain run, and the supervised baselines.


rule finetune:
    input:
        config=run_config_file(RUN),
        data=data_marker,
        pretrain=pretrain_metrics,
    output:
        metrics=metrics_file(RUN),
    wildcard_constraints:
        method="relvit|relvit_mega",
    params:
        launch=launcher("finetune"),
        out=lambda wc: run_dir(planned(wc).run_id),
        execution=run_execution_file,
        init=pretrain_checkpoint,
    log:
        job_log(RUN),
    threads: config["threads_per_run"]
    resources:
        **stage_resources("finetune"),
    conda:
        "../../envs/relvit.yaml"
    container:
        CONTAINER
    shell:
        "{params.launch} finetune --config {input.config:q} --execution {params.execution:q}"
        " --out {params.out:q} --init {params.init:q} --threads {threads} --no-progress"
        " --replace-changed --record-failure > {log:q} 2>&1"


rule supervised:
    input:
        config=run_config_file(RUN),
        data=data_marker,
    output:
        metrics=metrics_file(RUN),
    wildcard_constraints:
        method="supervised|supervised_same_epochs",
    params:
        launch=launcher("supervised"),
        out=lambda wc: run_dir(planned(wc).run_id),
        execution=run_execution_file,
    log:
        job_log(RUN),
    threads: config["threads_per_run"]
    resources:
        **stage_resources("supervised"),
    conda:
        "../../envs/relvit.yaml"
    container:
        CONTAINER
    shell:
        "{params.launch} supervised --config {input.config:q} --execution {params.execution:q}"
        " --out {params.out:q} --threads {threads} --no-progress --replace-changed"
        " --record-failure > {log:q} 2>&1"
