"""A real `dvc exp show --json` and per-utterance predictions, recorded for the results, render, figures and
report tests.

`tests/fixtures/exp_show.json` was recorded with DVC 3.67 in a throw-away repo whose one stage imitates the
eval stage (made-up hypotheses, scored with `forgetting.scoring`): a baseline (λ 0.4) and experiments λ 0, 0.1, 1,
l2, lr 1e-5 (λ 0.4 and 1), Fisher normalised by max, one whose metrics file is truncated, one that failed in
the queue and one still queued (`deps`/`outs` trimmed). `tests/fixtures/predictions/<rev>/` holds the
per-utterance TSVs of the baseline (34b6578) and of `ewc-lambda-0` (c92eb22), as `git show` returned them.
"""

import json
from pathlib import Path

from forgetting.render import render_markdown
from forgetting.results import Experiment, estimate_row, parse_exp_show, select_experiments

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
RECORDS = json.loads((FIXTURES / "exp_show.json").read_text(encoding="utf-8"))
METRICS = "reports/metrics.json"


def fixture_predictions(experiment: Experiment, file: str) -> str | None:
    path = FIXTURES / "predictions" / experiment.rev[:7] / file
    return path.read_text(encoding="utf-8") if path.is_file() else None


def table(records: list, samples: int = 1000) -> tuple[dict[str, dict[str, str]], list[Experiment], list]:
    """The Markdown table of `records` as {experiment: {header: cell}}, with the experiments and their rows."""
    experiments, _ = select_experiments(parse_exp_show(records, METRICS)[0], [])
    rows = [estimate_row(e, fixture_predictions, samples)[0] for e in experiments]
    lines = render_markdown(experiments, rows).splitlines()
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    cells = {}
    for line in lines[2:]:
        values = [v.strip() for v in line.strip("|").split("|")]
        cells[values[0]] = dict(zip(header, values, strict=True))
    return cells, experiments, rows


def experiment_record(records: list, name: str) -> dict:
    return next(r for group in records[1]["experiments"] for r in group["revs"] if r["name"] == name)
