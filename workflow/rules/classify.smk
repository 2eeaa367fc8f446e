# Classification: RelViT fine-tuning from a pretrain run, and the supervised baselines.


rule finetune:
    input:
        config=run_config_file("{dataset}/{backbone}/relvit/seed{seed}"),
        pretrain=metrics_file("{dataset}/{backbone}/pretrain/seed{seed}"),
    output:
        metrics=metrics_file("{dataset}/{backbone}/relvit/seed{seed}"),
    params:
        out=lambda wc: run_dir(f"{wc.dataset}/{wc.backbone}/relvit/seed{wc.seed}"),
        init=pretrain_checkpoint,
    log:
        f"{RESULTS}/logs/{{dataset}}/{{backbone}}/relvit/seed{{seed}}.log",
    threads: config["threads_per_run"]
    conda:
        "../../envs/relvit.yaml"
    shell:
        "relvit finetune --config {input.config:q} --out {params.out:q} --init {params.init:q}"
        " --threads {threads} --no-progress > {log:q} 2>&1"


rule supervised:
    input:
        config=run_config_file("{dataset}/{backbone}/{method}/seed{seed}"),
    output:
        metrics=metrics_file("{dataset}/{backbone}/{method}/seed{seed}"),
    wildcard_constraints:
        method="supervised|supervised_same_epochs",
    params:
        out=lambda wc: run_dir(f"{wc.dataset}/{wc.backbone}/{wc.method}/seed{wc.seed}"),
    log:
        f"{RESULTS}/logs/{{dataset}}/{{backbone}}/{{method}}/seed{{seed}}.log",
    threads: config["threads_per_run"]
    conda:
        "../../envs/relvit.yaml"
    shell:
        "relvit supervised --config {input.config:q} --out {params.out:q}"
        " --threads {threads} --no-progress > {log:q} 2>&1"
