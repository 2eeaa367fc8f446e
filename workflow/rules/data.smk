# Datasets: download, verify checksums, extract, check the layout; the marker it writes is the
# input of every training rule on that dataset. ImageNet-1K / -100 cannot be downloaded without
# an account: the rule checks the files you put in place and says exactly what is missing.


rule prepare_data:
    output:
        ready_marker("{dataset}"),
    params:
        root=lambda wildcards, output: os.path.dirname(os.path.dirname(output[0])),
        offline="--offline" if DATA.get("offline", False) else "",
    log:
        f"{RESULTS}/logs/data/{{dataset}}.log",
    resources:
        **stage_resources("prepare_data"),
    conda:
        "../../envs/relvit.yaml"
    container:
        CONTAINER
    shell:
        "relvit prepare-data {wildcards.dataset} --root {params.root:q} {params.offline}"
        " > {log:q} 2>&1"
