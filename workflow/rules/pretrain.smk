# RelViT SSL pre-training (upstream): relations + absolute positions (method spec §3).
# Only metrics.json is declared: Snakemake never deletes best.pt / last.pt of a run that failed,
# so re-running resumes from the last complete epoch.


rule pretrain:
    input:
        config=run_config_file("{dataset}/{backbone}/pretrain/seed{seed}"),
    output:
        metrics=metrics_file("{dataset}/{backbone}/pretrain/seed{seed}"),
    params:
        out=lambda wc: run_dir(f"{wc.dataset}/{wc.backbone}/pretrain/seed{wc.seed}"),
    log:
        f"{RESULTS}/logs/{{dataset}}/{{backbone}}/pretrain/seed{{seed}}.log",
    threads: config["threads_per_run"]
    conda:
        "../../envs/relvit.yaml"
    shell:
        "relvit pretrain --config {input.config:q} --out {params.out:q}"
        " --threads {threads} --no-progress > {log:q} 2>&1"
