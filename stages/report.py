"""Thesis tables and figures from all experiments: `python -m stages.report [--exp NAME ...] [--compare A=B ...]
[--baseline NAME] [--out reports/thesis]`.

Reads `dvc exp show --json` (the baseline commit, its experiments and the workspace), groups the experiments that
differ only in a training seed into one row, reads each experiment's per-utterance predictions from git
(`git show <rev>:reports/eval/<model>_<lang>.tsv`; from disk for the workspace) for the intervals and the paired
tests, and writes `results.md`, `results.tex`, `forgetting_vs_german.png` and `lambda_sweep.png`. `--compare A=B`
tests A minus B after adaptation; `--baseline B` every other row against B; A and B name an experiment or any
member of a seed group. Not a pipeline stage: it reads across experiments, which no stage may do.
"""

import json
import subprocess
import sys
from pathlib import Path

from forgetting.evaluation.estimates import compare_groups, estimate_group
from forgetting.evaluation.experiments import (
    comparison_pairs,
    git_files,
    group_by_seed,
    machine_notes,
    parse_exp_show,
    read_machines,
    select_experiments,
)
from forgetting.evaluation.figures import plot_forgetting_vs_german, plot_lambda_sweep
from forgetting.evaluation.render import ORDER_KEYS, render_latex, render_markdown, sweep_points
from forgetting.io import atomic_write_text
from stages import cli

PROVENANCE = ["reports/pretrain/provenance.json", "reports/importance/provenance.json", "reports/adapt/provenance.json",
              "reports/average/provenance.json", "reports/eval/provenance.json"]


def read_exp_show() -> list[dict]:
    """`dvc exp show --json` of the repository in the current folder."""
    done = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"report: `dvc exp show --json` failed with exit code {done.returncode}: {done.stderr.strip()}")
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError as err:
        raise SystemExit(f"report: `dvc exp show --json` printed no JSON ({err}): {done.stdout[:200]!r}") from err


def main() -> None:
    parser = cli.parser(__doc__.splitlines()[0])
    parser.add_argument("--exp", nargs="+", action="extend", default=[], help="experiment names or rev prefixes (default: all)")
    parser.add_argument("--compare", action="append", default=[], metavar="A=B", help="test A minus B (repeatable)")
    parser.add_argument("--baseline", metavar="B", help="test every other row minus B")
    parser.add_argument("--out", type=Path, default=Path("reports/thesis"))
    parser.add_argument("--bootstrap", type=int,
                        help="resamples for the intervals (default: each experiment's own eval.bootstrap_samples)")
    parser.add_argument("--metrics", default="reports/metrics.json", help="the eval stage's metrics file (dvc.yaml)")
    parser.add_argument("--predictions", type=Path, default=Path("reports/eval"), help="the eval stage's predictions")
    parser.add_argument("--provenance", nargs="+", default=PROVENANCE, help="the stages' provenance files (dvc.yaml)")
    args = parser.parse_args()

    found, notes = parse_exp_show(read_exp_show(), args.metrics)
    experiments, more = select_experiments(found, args.exp, ORDER_KEYS)
    if not experiments:
        raise SystemExit(f"report: no experiments with metrics in {args.metrics}; run `dvc repro` or `dvc exp run` first")
    groups, grouping = group_by_seed(experiments)
    pairs, source = comparison_pairs(groups, args.compare, args.baseline), git_files(args.predictions)
    rows, comparisons = [], []
    for group in groups:
        row, row_notes = estimate_group(group, source, args.bootstrap)
        rows.append(row)
        notes += row_notes
    for first, second in pairs:
        comparison, comparison_notes = compare_groups(first, second, source, args.bootstrap)
        comparisons.append(comparison)
        notes += comparison_notes
    repository = git_files(Path("."))
    machines = machine_notes(groups, pairs, {e.name: read_machines(e, repository, args.provenance) for e in experiments})
    for note in notes + more + grouping + machines:
        print(f"report: {note}")

    atomic_write_text(args.out / "results.md", render_markdown(groups, rows, comparisons, args.bootstrap, machines))
    atomic_write_text(args.out / "results.tex", render_latex(groups, rows, comparisons, args.bootstrap, machines))
    written, sweep = ["results.md", "results.tex"], sweep_points(groups, rows)
    for name, plot in (("forgetting_vs_german.png", plot_forgetting_vs_german), ("lambda_sweep.png", plot_lambda_sweep)):
        if plot(sweep, args.out / name):
            written.append(name)
        else:
            print(f"report: {name} not drawn: no experiment has the metrics it plots")
    resamples = "each experiment's own" if args.bootstrap is None else str(args.bootstrap)
    print(f"report: {len(experiments)} experiments in {len(groups)} rows, {len(comparisons)} comparisons, {resamples} "
          f"bootstrap resamples -> {args.out}/{{{','.join(written)}}}")


if __name__ == "__main__":
    cli.run(main)
