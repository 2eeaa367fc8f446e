# One resolved run config per planned run (relvit.workflow); a training rule reruns when its
# run config changes.
import yaml


localrules:
    run_config,  # writes one small YAML: not worth a cluster job


rule run_config:
    output:
        run_config_file("{run}"),
    params:
        config=planned_config,
    log:
        f"{RESULTS}/logs/configs/{{run}}.log",
    run:
        with open(output[0], "w") as handle:
            yaml.safe_dump(params.config, handle, sort_keys=False)
