"""A real `dvc exp show --json` and per-utterance predictions, recorded for the results, render, figures and
report tests.

`tests/fixtures/report/` was recorded by its `record.py` (DVC 3.67, a throw-away repo whose one stage imitates the
eval stage with made-up hypotheses, scored and summarised by `forgetting.evaluation.scoring`): the baseline `main` (ewc,
λ 0.25, seeds 0) and its experiments: adapt seeds 1 and 2 and pretrain seed 1 (one seed group with main), λ 0 and
l2 with adapt seeds 0, 1, 2 (two more groups), λ 1, mas, lwf, lora, replay, the utterance bootstrap, eval.min_speakers
9 (the nl test set has 10 speakers, de 8), one whose metrics file is cut, one that failed in the queue and one still
queued (`deps`/`outs` trimmed). `predictions/<rev[:7]>/` holds each experiment's per-utterance TSVs as `git show`
returned them.
"""

import json
from pathlib import Path

from forgetting.evaluation.estimates import Row, estimate_group
from forgetting.evaluation.experiments import Experiment, Group, group_by_seed, parse_exp_show, select_experiments
from forgetting.evaluation.render import ORDER_KEYS, render_markdown

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "report"
RECORDS = json.loads((FIXTURES / "exp_show.json").read_text(encoding="utf-8"))
METRICS = "reports/metrics.json"


def fixture_predictions(experiment: Experiment, file: str) -> str | None:
    path = FIXTURES / "predictions" / experiment.rev[:7] / file
    return path.read_text(encoding="utf-8") if path.is_file() else None


def groups_of(records: list, names: tuple[str, ...] = ()) -> list[Group]:
    """The seed groups of the named experiments of `records` (all when none are named), in table order."""
    return group_by_seed(select_experiments(parse_exp_show(records, METRICS)[0], names, ORDER_KEYS)[0])[0]


def table(records: list, samples: int | None = 200) -> tuple[dict[str, dict[str, str]], list[Group], list[Row]]:
    """The Markdown table of `records` as {row name: {header: cell}}, with the groups and their rows."""
    groups = groups_of(records)
    rows = [estimate_group(g, fixture_predictions, samples)[0] for g in groups]
    lines = render_markdown(groups, rows, (), samples).split("\n\n")[0].splitlines()
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    cells = {}
    for line in lines[2:]:
        values = [v.strip() for v in line.strip("|").split("|")]
        cells[values[0]] = dict(zip(header, values, strict=True))
    return cells, groups, rows


def experiment_record(records: list, name: str) -> dict:
    return next(r for group in records[1]["experiments"] for r in group["revs"] if r["name"] == name)


def experiment(name: str) -> Experiment:
    """The fixture's experiment of that name."""
    return next(e for e in parse_exp_show(RECORDS, METRICS)[0] if e.name == name)


def group(name: str) -> Group:
    """The fixture's seed group with a member of that name."""
    return next(g for g in groups_of(RECORDS) if any(e.name == name for e in g.members))
