# Datasets: download, verify checksums, extract, check the layout; the marker it writes is the
# input of every training rule on that dataset. ImageNet-1K / -100 cannot be downloaded without
# an account: the rule checks the files you put in place and says exactly what is missing.
# resize_data makes the resized copy of a dataset that `data.resized` names (resumable).


rule prepare_data:
    output:
        ready_marker("{dataset}"),
    params:
        root=lambda wildcards, output: os.path.dirname(os.path.dirname(output[0])),
        execution=prepare_data_file(DATA_ROOT),  # data.offline, read by the job (relvit.execution)
    log:
        f"{RESULTS}/logs/data/{{dataset}}.log",
    resources:
        **stage_resources("prepare_data"),
    conda:
        "../../envs/relvit.yaml"
    container:
        CONTAINER
    shell:
        "relvit prepare-data {wildcards.dataset} --root {params.root:q}"
        " --execution {params.execution:q} > {log:q} 2>&1"


rule resize_data:
    input:
        ready_marker("{dataset}"),
    output:
        resized_marker("{dataset}", "{side}"),
    wildcard_constraints:
        dataset=r"[A-Za-z0-9_]+",
        side=r"\d+",
    params:
        src=lambda wildcards: f"{DATA_ROOT}/{wildcards.dataset}",
        dst=lambda wildcards, output: os.path.dirname(output[0]),
    log:
        f"{RESULTS}/logs/data/{{dataset}}-s{{side}}.log",
    threads: config["threads_per_run"]
    resources:  # prepare_data's, with a CPU per worker process
        **{**stage_resources("prepare_data"), "cpus_per_task": config["threads_per_run"]},
    conda:
        "../../envs/relvit.yaml"
    container:
        CONTAINER
    shell:
        "relvit resize-images {params.src:q} {params.dst:q} --shorter-side {wildcards.side}"
        " --workers {threads} > {log:q} 2>&1"
