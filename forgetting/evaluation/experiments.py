"""Experiments from `dvc exp show --json`: what each holds, which ones a report shows and in what order, their seed
groups, the pairs a report compares, and where their per-utterance predictions are read from. The estimates are
`forgetting.evaluation.estimates`'s.

A seed group is the experiments that differ only in a training seed (`TRAINING_SEEDS`); a lone experiment is a group
of one.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgetting.errors import InputError

DASH = "–"  # a missing value in a table or label

TRAINING_SEEDS = ("pretrain.seed", "adapt.seed")  # the data seed `seed` is not one: it changes the test set


class ResultsError(InputError):
    """A request for experiments or comparisons that cannot be made; the message names them and those that exist."""


@dataclass(frozen=True)
class Experiment:
    """One row of `dvc exp show`: `rev` is a commit sha or "workspace"; params and metrics as nested dicts."""

    name: str
    rev: str
    params: dict[str, Any]
    metrics: dict[str, Any]

    def param(self, dotted: str) -> Any:
        return lookup(self.params, dotted)

    def metric(self, dotted: str) -> float | None:
        value = lookup(self.metrics, dotted)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Group:
    """Experiments that differ only in their training seeds (in the order `select_experiments` gives: by seed); named
    after the first."""

    members: tuple[Experiment, ...]

    @property
    def name(self) -> str:
        return self.members[0].name

    def param(self, dotted: str) -> Any:
        return self.members[0].param(dotted)


PredictionSource = Callable[[Experiment, str], str | None]
"""(experiment, file name such as "adapted_nl.tsv") -> the file's text, or None where it cannot be read (`git_files`)."""


def lookup(tree: dict[str, Any], dotted: str) -> Any:
    """The value at a dotted key (`interval.method`) of nested dicts, or None."""
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def parse_exp_show(records: list[dict[str, Any]], metrics_file: str) -> tuple[list[Experiment], list[str]]:
    """Experiments of `dvc exp show --json` whose `metrics_file` was read, and a note per one skipped.

    Layout (DVC 3): a list of baselines (the first is "workspace"), each with `data.params["params.yaml"].data`,
    `data.metrics[metrics_file].data` (or `.error`), and `experiments[].revs[]` of the same shape. A failed or
    queued experiment is skipped: a failed one still shows the metrics left in its tree by an earlier run.
    """
    found, notes = [], []
    pending = [(record, None) for record in records]
    while pending:
        record, executor = pending.pop(0)
        for group in record.get("experiments") or []:
            pending += [(rev, group.get("executor")) for rev in group.get("revs") or []]
        rev = str(record.get("rev"))
        name = record.get("name") or (rev if rev == "workspace" else rev[:7])
        data = record.get("data") or {}
        state = (executor or {}).get("state")
        metrics = (data.get("metrics") or {}).get(metrics_file) or {}
        if record.get("error") or state == "failed":
            notes.append(f"{name}: skipped, the experiment failed ({(record.get('error') or {}).get('msg', state)})")
        elif state in ("queued", "running"):
            notes.append(f"{name}: skipped, {state}")
        elif "data" not in metrics:
            reason = (metrics.get("error") or {}).get("msg", "no such file")
            notes.append(f"{name}: skipped, {metrics_file} unreadable: {reason}")
        else:
            params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
            found.append(Experiment(name=name, rev=rev, params=params, metrics=metrics["data"]))
    return found, notes


def as_number(value: Any) -> float | None:
    """A params value as a number ("1e-05" arrives as a string from `dvc exp run -S`), or None."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def format_param(value: Any) -> str:
    """A params value for a table cell or legend: numbers in `%g` (`1e-05`, `0.4`), missing as an en dash."""
    if value is None:
        return DASH
    number = as_number(value)
    return f"{number:g}" if number is not None and not isinstance(value, int) else str(value)


def _matches(experiment: Experiment, name: str) -> bool:
    return name in (experiment.name, experiment.rev) or (len(name) >= 4 and experiment.rev.startswith(name))


def select_experiments(experiments: Sequence[Experiment], names: Sequence[str],
                       order_keys: Sequence[str]) -> tuple[list[Experiment], list[str]]:
    """Those named (by name or rev prefix; all when `names` is empty) sorted by the params `order_keys` (numbers
    before text, then by name), and notes.

    The workspace is dropped where it repeats another row's params and metrics (as after `dvc repro` + commit)."""
    unknown = [n for n in names if not any(_matches(e, n) for e in experiments)]
    if unknown:
        raise ResultsError(f"--exp {' '.join(unknown)}: no such experiment with metrics "
                           f"(have: {', '.join(e.name for e in experiments)})")
    chosen = [e for e in experiments if not names or any(_matches(e, n) for n in names)]
    notes = []
    for e in [e for e in chosen if e.rev == "workspace"]:
        twin = next((o for o in chosen if o is not e and (o.params, o.metrics) == (e.params, e.metrics)), None)
        if twin is not None:
            chosen.remove(e)
            notes.append(f"workspace: same params and metrics as {twin.name}; one row for both")

    def order(e: Experiment) -> tuple[tuple[int, float, str], ...]:
        values = [(as_number(e.param(key)), e.param(key)) for key in (*order_keys, *TRAINING_SEEDS)]
        return (*((0, n, "") if n is not None else (1, 0.0, str(v)) for n, v in values), (2, 0.0, e.name))
    return sorted(chosen, key=order), notes


def group_by_seed(experiments: Sequence[Experiment]) -> tuple[list[Group], list[str]]:
    """Seed groups in order of their first member: experiments whose params are equal but for TRAINING_SEEDS; notes
    on members that share their seeds as well (their spread is then not seed variation)."""
    groups: dict[str, list[Experiment]] = {}
    for e in experiments:
        params = json.loads(json.dumps(e.params))
        for dotted in TRAINING_SEEDS:
            *parents, leaf = dotted.split(".")
            node = lookup(params, ".".join(parents)) if parents else params
            if isinstance(node, dict):
                node.pop(leaf, None)
        groups.setdefault(json.dumps(params, sort_keys=True), []).append(e)
    notes = []
    for members in groups.values():
        seeds = [tuple(e.param(key) for key in TRAINING_SEEDS) for e in members]
        twins = [e.name for e, s in zip(members, seeds, strict=True) if seeds.count(s) > 1]
        if twins:
            notes.append(f"{', '.join(twins)}: same params and the same training seeds; grouped, but their spread "
                         "is not seed variation")
    return [Group(tuple(members)) for members in groups.values()], notes


def find_group(groups: Sequence[Group], name: str, flag: str) -> Group:
    """The group with a member named `name` (or whose rev starts with it); `flag` names the option in the error."""
    found = [g for g in groups if any(_matches(e, name) for e in g.members)]
    if len(found) != 1:
        have = ", ".join(e.name for g in groups for e in g.members)
        raise ResultsError(f"{flag} {name}: {'no' if not found else 'more than one'} experiment of the report "
                           f"matches (have: {have})")
    return found[0]


def comparison_pairs(groups: Sequence[Group], compare: Sequence[str], baseline: str | None) -> list[tuple[Group, Group]]:
    """(first, second) pairs to compare as first − second: each `A=B` of `compare`, then every other group against
    `baseline`; a pair of one group with itself is refused."""
    pairs = []
    for spec in compare:
        first, sep, second = spec.partition("=")
        if not sep or not first or not second:
            raise ResultsError(f"--compare {spec}: expected A=B (A minus B), two experiment names")
        pairs.append((find_group(groups, first, "--compare"), find_group(groups, second, "--compare")))
    if baseline is not None:
        reference = find_group(groups, baseline, "--baseline")
        pairs += [(g, reference) for g in groups if g is not reference]
    for first, second in pairs:
        if first is second:
            raise ResultsError(f"--compare {first.name}={second.name}: the same seed group on both sides")
    return list({(first.name, second.name): (first, second) for first, second in pairs}.values())  # each pair once


def git_files(folder: Path) -> PredictionSource:
    """Files of an experiment (its predictions, its provenance records): `git show <rev>:<folder>/<file>`, or the file
    on disk for the workspace."""
    def read(experiment: Experiment, file: str) -> str | None:
        path = folder / file
        if experiment.rev == "workspace":
            return path.read_text(encoding="utf-8") if path.is_file() else None
        shown = subprocess.run(["git", "show", f"{experiment.rev}:./{path.as_posix()}"], capture_output=True,
                               text=True, encoding="utf-8", check=False)
        return shown.stdout if shown.returncode == 0 else None
    return read


Machine = tuple[str, str]
"""What computed a stage's outputs: (machine, mode) of its provenance.json (`forgetting.machine.provenance`)."""


def read_machines(experiment: Experiment, read: PredictionSource, files: Sequence[str]) -> frozenset[Machine]:
    """The (machine, mode) of each stage's provenance record among `files` that the experiment holds."""
    found = set()
    for file in files:
        text = read(experiment, file)
        if text is None:
            continue
        try:
            record = json.loads(text)
            found.add((str(record["machine"]), str(record["mode"])))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ResultsError(f"{experiment.name}: {file} is not a provenance record ({err})") from err
    return frozenset(found)


def machine_notes(groups: Sequence[Group], pairs: Sequence[tuple[Group, Group]],
                  machines: dict[str, frozenset[Machine]]) -> list[str]:
    """Which machines made which experiments, and a warning for each row or comparison whose numbers come from more
    than one machine or mode, or from experiments with no provenance beside others (`machines`: experiment name ->
    `read_machines`)."""
    by_machine: dict[str, list[str]] = {}
    for g in groups:
        for e in g.members:
            for machine, mode in sorted(machines.get(e.name) or {("no provenance recorded", "")}):
                by_machine.setdefault(f"{machine}, {mode}" if mode else machine, []).append(e.name)
    notes = ["Computed on: " + "; ".join(f"{m}: {', '.join(names)}" for m, names in by_machine.items()) + "."]

    def warn(label: str, members: Sequence[Experiment]) -> None:
        made = set().union(*(machines.get(e.name, frozenset()) for e in members))
        unknown = [e.name for e in members if not machines.get(e.name)]
        if unknown and made:
            notes.append(f"Warning: {label}: no provenance for {', '.join(unknown)} (run before it was recorded), so "
                         "whether its numbers share the others' machine is unknown.")
        if len(made) <= 1:
            return
        modes = {mode for _, mode in made}
        why = ("the mode is meant to give the same bytes on every x86-64 CPU with AVX2 (README, tier 2), so these "
               "numbers should agree; a difference is a finding" if modes == {"reproducible"} else
               "the machine acts as one more seed, unreported (README, Reproducible on any machine)")
        listing = "; ".join(f"{machine}, {mode}" for machine, mode in sorted(made))
        notes.append(f"Warning: {label} mixes {'modes' if len(modes) > 1 else 'machines'} ({listing}): {why}.")

    for g in groups:
        warn(f"row {g.name}", g.members)
    for first, second in pairs:
        warn(f"comparison {first.name} - {second.name}", first.members + second.members)
    return notes
