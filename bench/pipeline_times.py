"""Where a Snakemake run's time went: each rule's jobs, the training runs' own time, idle cores.

    python bench/pipeline_times.py [LOG] [--cores N]

LOG is the log Snakemake writes for every invocation (default: the newest
`.snakemake/log/*.snakemake.log` under the current directory that ran jobs). Each job's start and
end are the log's timestamps (1-s resolution). A training job's own time is its run's
`wall_time_s` in the metrics.json it outputs: the run's epochs, training and evaluation, without
the process's start-up (imports, data loading, model building); the evaluation's part is the sum
of `eval_time_s` in the run's history.csv (runs since 2026-11-28). Prints, in Markdown, per rule:
jobs, job-seconds, the runs' own seconds, their evaluation's, and the rest; then the core-seconds
(cores × wall time) split into the runs' own time (and their evaluation's), the jobs' time
outside it and the time no job held a core (Snakemake building its DAG and between jobs, or too
few jobs ready). Issue 6 asks for this split of the smoke pipeline, evaluation counted outside
training (docs/performance.md, "The smoke pipeline on 2 CPU cores").

A run resumed from an earlier invocation counts its earlier epochs too: measure from a clean
start. Exit status 1 for a log with no finished job, 2 for a file that is no Snakemake log or a
training job whose metrics.json has no `wall_time_s` or whose history.csv cannot be read (the
message names the file).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from relvit.layout import HISTORY, METRICS

TIMESTAMP = re.compile(r"\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
HEADER_DATE = re.compile(r"\s*Date: (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")
WORKDIR = re.compile(r"\s*Working directory: (.+)")
CORES = re.compile(r"Provided cores: (\d+)")
JOB_START = re.compile(r"(?:local)?rule (\w+):$")
JOB_KEY = re.compile(r"\s+(output|jobid|threads): (.+)")
JOB_END = re.compile(r"Finished jobid: (\d+)")


@dataclass
class Job:
    """One job of the log: its rule, when it started and ended, what it wrote."""

    rule: str
    start: datetime
    jobid: str = ""
    threads: int = 1
    outputs: list[str] = field(default_factory=list)
    end: datetime | None = None

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


@dataclass
class PipelineLog:
    """What a Snakemake log says of its run."""

    path: Path
    start: datetime
    cores: int | None
    workdir: Path
    jobs: list[Job]


def _timestamp(text: str) -> datetime:
    return datetime.strptime(" ".join(text.split()), "%a %b %d %H:%M:%S %Y")


def parse_log(path: Path) -> PipelineLog:
    """The jobs of a Snakemake log, with the run's start (its header's date, else its first
    timestamp), its cores and its working directory (the header's, else the log's project)."""
    start = cores = workdir = now = job = None
    jobs: dict[str, Job] = {}
    for line in path.read_text(errors="replace").splitlines():
        if m := TIMESTAMP.match(line):
            now = _timestamp(m.group(1))
            start = start or now
        elif start is None and (m := HEADER_DATE.match(line)):
            start = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
        elif m := WORKDIR.match(line):
            workdir = workdir or Path(m.group(1).strip())
        elif m := CORES.match(line):
            cores = int(m.group(1))
        elif (m := JOB_START.match(line)) and now is not None:
            job = Job(m.group(1), now)
        elif job is not None and (m := JOB_KEY.match(line)):
            key, value = m.groups()
            if key == "output":
                job.outputs = [p.strip() for p in value.split(",")]
            elif key == "threads":
                job.threads = int(value)
            else:
                job.jobid = value.strip()
                jobs[job.jobid] = job
        elif (m := JOB_END.match(line)) and m.group(1) in jobs:
            jobs[m.group(1)].end = now
            job = None
        elif not line.startswith(" "):
            job = None
    if start is None or not jobs:
        raise ValueError(f"{path}: no Snakemake jobs in it (is it a Snakemake log?)")
    project = path.resolve().parents[2] if path.parent.name == "log" else path.parent
    return PipelineLog(path, start, cores, workdir or project, list(jobs.values()))


def _run_metrics(job: Job, workdir: Path) -> Path | None:
    """The metrics.json of the training run the job wrote, if it is one."""
    return next((workdir / output for output in job.outputs if output.endswith(METRICS)), None)


def run_seconds(job: Job, workdir: Path) -> float | None:
    """The training run's own time (`wall_time_s` of the metrics.json the job wrote), if any."""
    path = _run_metrics(job, workdir)
    if path is None:
        return None
    try:
        return float(json.loads(path.read_text())["wall_time_s"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: no wall_time_s to read ({error})") from error


def evaluation_seconds(job: Job, workdir: Path) -> float | None:
    """The training run's evaluation time: `eval_time_s` summed over its history.csv (beside
    its metrics.json); None for no training job, or a run recorded before the column."""
    path = _run_metrics(job, workdir)
    if path is None:
        return None
    history = path.with_name(HISTORY)
    try:
        with history.open(newline="") as handle:
            cells = [row.get("eval_time_s") for row in csv.DictReader(handle)]
        return sum(float(cell) for cell in cells) if cells and all(cells) else None
    except (OSError, ValueError) as error:
        raise ValueError(f"{history}: no eval_time_s to read ({error})") from error


def idle_core_seconds(jobs: list[Job], start: datetime, end: datetime, cores: int) -> int:
    """Core-seconds between start and end in which no job held the core (second by second)."""
    length = int((end - start).total_seconds())
    change = [0] * (length + 1)
    for job in jobs:
        change[int((job.start - start).total_seconds())] += job.threads
        change[int((job.end - start).total_seconds())] -= job.threads
    idle, busy = 0, 0
    for second in range(length):
        busy += change[second]
        idle += max(0, cores - busy)
    return idle


@dataclass
class RuleTotals:
    """A rule's finished jobs: how many, their seconds, and the runs' own seconds among them."""

    jobs: int = 0
    seconds: float = 0.0
    runs: int = 0
    own: float = 0.0
    evaluation: float | None = 0.0  # None once a run has no eval_time_s

    def add(self, job: Job, own: float | None, evaluation: float | None) -> None:
        self.jobs += 1
        self.seconds += job.seconds
        if own is not None:
            self.runs += 1
            self.own += own
            self.evaluation = (None if self.evaluation is None or evaluation is None
                               else self.evaluation + evaluation)

    def row(self, name: str) -> str:
        per_run = f"{(self.seconds - self.own) / self.runs:.1f}" if self.runs else ""
        evaluation = "" if self.evaluation is None else f"{self.evaluation:.0f}"
        return (f"| {name} | {self.jobs} | {self.seconds:.0f} | {self.own:.0f} | {evaluation} | "
                f"{self.seconds - self.own:.0f} | {per_run} |")


def _share(part: float, whole: float) -> str:
    """`part` of `whole` in percent; "—" for a log whose jobs all ended in the second it began
    (Snakemake's times are whole seconds)."""
    return f"{part / whole:.1%}" if whole else "—"


def report(log: PipelineLog, cores: int) -> str:
    """The Markdown breakdown of the log's finished jobs."""
    finished = [job for job in log.jobs if job.end is not None]
    end = max(job.end for job in finished)
    wall = (end - log.start).total_seconds()
    rules: dict[str, RuleTotals] = {}
    total = RuleTotals()
    job_core_s = own_core_s = 0.0  # a job holds `threads` cores for its seconds
    run_evaluations = []  # (threads, evaluation seconds or None) of each training run
    for job in finished:
        own = run_seconds(job, log.workdir)
        evaluation = evaluation_seconds(job, log.workdir)
        job_core_s += job.threads * job.seconds
        own_core_s += job.threads * (own or 0.0)
        if own is not None:
            run_evaluations.append((job.threads, evaluation))
        for totals in (rules.setdefault(job.rule, RuleTotals()), total):
            totals.add(job, own, evaluation)
    eval_core_s = None if any(e is None for _, e in run_evaluations) else \
        sum(threads * e for threads, e in run_evaluations)
    lines = [f"{log.path}: {len(finished)} jobs finished on {cores} cores in {wall:.0f} s "
             "(from Snakemake's start to its last job's end)", "",
             "| rule | jobs | job s | runs' own s | of which evaluation s | outside the runs s "
             "| outside, per run s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [totals.row(rule) for rule, totals in
              sorted(rules.items(), key=lambda item: -item[1].seconds)]
    lines.append(total.row("total"))
    core_s = cores * wall
    outside_s = job_core_s - own_core_s
    idle = idle_core_seconds(finished, log.start, end, cores)
    unfinished = [f"{job.rule} (job {job.jobid})" for job in log.jobs if job.end is None]
    also_unfinished = "; the jobs not finished in this log, too" if unfinished else ""
    lines += ["", f"Core-seconds ({cores} cores × {wall:.0f} s): {core_s:.0f}",
              f"- the training runs' own time (their epochs): {own_core_s:.0f} "
              f"({_share(own_core_s, core_s)})"]
    if eval_core_s is not None:
        lines.append(f"  - of which evaluation: {eval_core_s:.0f} ({_share(eval_core_s, core_s)})")
    lines += [f"- the jobs' time outside it (start-up, imports, the report jobs): "
              f"{outside_s:.0f} ({_share(outside_s, core_s)})",
              f"- no finished job on the core (Snakemake's DAG, between jobs, waiting on inputs"
              f"{also_unfinished}): {idle} ({_share(idle, core_s)})",
              f"- **outside training: {_share(core_s - own_core_s, core_s)}**"]
    if eval_core_s is not None:
        lines.append(f"- **outside the training steps (evaluation too): "
                     f"{_share(core_s - own_core_s + eval_core_s, core_s)}**")
    else:
        lines.append("- evaluation not split out: a run's history.csv has no eval_time_s "
                     "(recorded before 2026-11-28)")
    if unfinished:
        lines += ["", f"Not finished in this log (failed, or still running): "
                      f"{', '.join(unfinished)}"]
    return "\n".join(lines)


def newest_log(root: Path) -> Path:
    """The newest Snakemake log under root/.snakemake/log that holds jobs: a later `snakemake`
    with nothing to do, or `snakemake --report`, writes a log of its own without any."""
    folder = root / ".snakemake" / "log"
    logs = sorted(folder.glob("*.snakemake.log"))
    for log in reversed(logs):
        try:
            parse_log(log)
            return log
        except ValueError:
            continue
    what = "no Snakemake log" if not logs else f"none of its {len(logs)} Snakemake logs ran a job"
    raise FileNotFoundError(f"{folder}: {what}; pass one")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", nargs="?", type=Path,
                        help="a Snakemake log (default: the newest in .snakemake/log "
                             "that ran jobs)")
    parser.add_argument("--cores", type=int,
                        help="the cores the jobs ran on (default: the log's 'Provided cores')")
    args = parser.parse_args(argv)
    try:
        log = parse_log(args.log or newest_log(Path.cwd()))
        cores = args.cores or log.cores
        if not cores:
            raise ValueError(f"{log.path}: no 'Provided cores' line; pass --cores")
        if not any(job.end for job in log.jobs):
            print(f"{log.path}: no job finished", file=sys.stderr)
            return 1
        print(report(log, cores))
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
