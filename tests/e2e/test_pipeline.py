"""The real pipeline through the real `dvc` CLI, on a micro config, in a temporary git repo copy."""

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from forgetting.demo.synth import write_demo_corpus
from tests.e2e.micro import commit, dvc, make_repo, run, set_key, stages_run

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]  # the slowest takes about 130 s here

@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return make_repo(tmp_path_factory.mktemp("pipeline") / "repo")


def test_repro_vocab_then_up_to_date_then_only_the_changed_branch(repo):
    first = dvc(repo, "repro", "vocab")
    assert stages_run(first) == {"demo", "sample@nl", "sample@de", "validate@nl", "validate@de", "vocab"}
    vocab = yaml.safe_load((repo / "data/vocab.json").read_text(encoding="utf-8"))
    assert list(vocab)[:3] == ["[PAD]", "[UNK]", "|"]
    assert {"ë", "ä", "ß"} <= set(vocab)
    for lang in ("nl", "de"):
        assert (repo / f"data/validated/{lang}/rejects.tsv").is_file()
        kept = sum(len((repo / f"data/validated/{lang}/{s}.tsv").read_text().splitlines()) - 1 for s in ("train", "dev", "test"))
        assert kept > 0

    assert stages_run(dvc(repo, "repro", "vocab")) == set()

    raw = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    set_key(raw, "sample.nl.n", 30)
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
    assert stages_run(dvc(repo, "repro", "vocab")) == {"sample@nl", "validate@nl", "vocab"}


def table_rows(path: Path) -> list[str]:
    """The body rows of a Markdown table (after the header and the rule)."""
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("|")][2:]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_whole_chain_writes_sane_metrics_and_then_is_up_to_date(repo):
    ran = stages_run(dvc(repo, "repro"))
    assert ran == {"pretrain", "importance", "adapt", "average", "eval"}  # the data stages ran in the test before
    metrics = read_json(repo / "reports/metrics.json")
    before, after = metrics["pretrained"], metrics["adapted"]
    for rates in (before["nl"], before["de"], after["nl"], after["de"]):
        assert 0 <= rates["cer"] <= 3 and 0 <= rates["wer"] <= 3 and rates["utterances"] > 0
        if rates["speakers"] >= metrics["interval"]["min_speakers"]:
            assert rates["wer_ci_low"] <= rates["wer"] <= rates["wer_ci_high"]
            assert rates["cer_ci_low"] <= rates["cer"] <= rates["cer_ci_high"]
        else:  # too few speakers for a speaker-level interval: none, and a note that says why
            assert "wer_ci_low" not in rates and "eval.min_speakers" in rates["note"]
    assert metrics["forgetting"]["nl"]["wer"] == pytest.approx(after["nl"]["wer"] - before["nl"]["wer"])
    assert metrics["learning"]["de"]["cer"] == pytest.approx(before["de"]["cer"] - after["de"]["cer"])
    assert metrics["awer"] == pytest.approx((after["nl"]["wer"] + after["de"]["wer"]) / 2)
    assert metrics["bwt"] == pytest.approx(-metrics["forgetting"]["nl"]["wer"])
    importance = read_json(repo / "reports/importance/summary.json")
    assert (importance["samples"], importance["normalize"], importance["kind"]) == (6, "mean", "empirical")
    assert importance["loss"] == "log_likelihood"
    assert (repo / "models/importance/utterances.tsv").read_text().count("\n") == 6 + 1
    adapt = read_json(repo / "reports/adapt/metrics.json")
    assert adapt["train"]["penalty"] > 0  # the default λ > 0, and the weights moved
    assert adapt["kept"]["rule"] == "last" and adapt["kept"]["step"] == 3 and set(adapt["kept"]["dev"]) == {"de", "nl"}
    average = read_json(repo / "reports/average/metrics.json")  # α = 1: the kept checkpoint, scored again on dev
    assert average["alpha"] == 1 and set(average["dev"]) == {"de", "nl"}
    for lang, rates in adapt["kept"]["dev"].items():
        assert average["dev"][lang] == pytest.approx(rates, abs=1e-12)
    assert metrics["interval"]["method"] == "speaker"
    for figure in ("error_rates", "adapt_curves", "importance_by_layer"):
        assert (repo / f"reports/figures/{figure}.png").read_bytes()[:4] == b"\x89PNG"
    assert stages_run(dvc(repo, "repro")) == set()
    assert "Data and pipelines are up to date" in dvc(repo, "status")
    commit(repo, "baseline")


def test_adapt_only_experiment_reruns_adapt_and_eval_and_diffs(repo):
    ran = stages_run(dvc(repo, "exp", "run", "-S", "adapt.ewc_lambda=0"))
    assert ran == {"adapt", "average", "eval"}
    diff = json.loads(dvc(repo, "metrics", "diff", "--json", "--all"))
    for key in ("forgetting.nl.wer", "forgetting.nl.cer", "learning.de.wer", "awer", "bwt"):
        assert key in diff["reports/metrics.json"]
    changed = json.loads(dvc(repo, "metrics", "diff", "--json"))
    assert changed["reports/adapt/metrics.json"]["train.penalty"]["new"] == 0  # λ = 0: plain fine-tuning
    # the README's table: the changed param and results only (the micro run's error rates barely move), no timings,
    # throughput, gradient norm or learning rate
    header = dvc(repo, "exp", "show", "--md", "--only-changed").splitlines()[0]
    assert "adapt.ewc_lambda" in header and "train.penalty" in header
    assert not re.search(r"runtime|per_second|grad_norm|learning_rate|total_flos|epoch", header), header
    assert not re.search(r"runtime|per_second", dvc(repo, "metrics", "diff", "--md", "--all"))


def back_to_baseline(repo: Path) -> None:
    """The committed params, lock file and outputs in the workspace (`dvc exp run` leaves its own there; the outputs
    kept in git, such as metrics and timings, come back with git)."""
    run(repo, "git", "checkout", "--", ".")
    dvc(repo, "checkout", "--force")


def test_a_training_seed_reruns_adapt_and_eval_only_and_averaging_reruns_averaging_and_eval(repo):
    back_to_baseline(repo)
    assert stages_run(dvc(repo, "exp", "run", "-S", "adapt.seed=1")) == {"adapt", "average", "eval"}
    back_to_baseline(repo)
    assert stages_run(dvc(repo, "exp", "run", "-S", "average.alpha=0.5")) == {"average", "eval"}
    back_to_baseline(repo)


def test_sweep_queue_show_report_and_share(repo, tmp_path):
    assert stages_run(dvc(repo, "exp", "run", "-S", "adapt.ewc_lambda=0.2", "-S", "adapt.lr=1e-5")) == {
        "adapt", "average", "eval"}
    dvc(repo, "exp", "run", "--queue", "-S", "adapt.ewc_lambda=0.1,1.0")
    dvc(repo, "queue", "start", "-j", "1")
    wait_for_queue(repo)

    shown = json.loads(dvc(repo, "exp", "show", "--json"))
    experiments = [rev for record in shown for exp in (record.get("experiments") or []) for rev in exp["revs"]]
    lambdas = sorted(rev["data"]["params"]["params.yaml"]["data"]["adapt"]["ewc_lambda"] for rev in experiments)
    assert lambdas == [0, 0.1, 0.2, 0.25, 0.25, 1.0]  # with the seed and averaging experiments at the default λ
    for rev in experiments:
        assert "awer" in rev["data"]["metrics"]["reports/metrics.json"]["data"]
    assert "reports/metrics.json" in json.loads(dvc(repo, "metrics", "diff", "--json", "--all"))

    # the README's table and plot commands
    assert "forgetting.nl.wer" in dvc(repo, "metrics", "show")
    assert "| Experiment" in dvc(repo, "exp", "show", "--md", "--only-changed")
    assert "| Path" in dvc(repo, "metrics", "diff", "--md", "--all")
    names = [rev["name"] for rev in experiments]
    for command in (["plots", "show"], ["plots", "diff", names[0], names[1]]):
        dvc(repo, *command, "-o", "dvc_plots")
        page = (repo / "dvc_plots/index.html").read_text(encoding="utf-8")
        assert "Regulariser (adapt)" in page and "Forgetting curve (adapt, dev CER)" in page and "Test error rates" in page

    run(repo, sys.executable, "-m", "stages.report", "--exp", names[0], "--exp", names[1], "--out", "reports/pair")
    assert sorted(row.split(" | ")[0] for row in table_rows(repo / "reports/pair/results.md")) == sorted(
        f"| {name}" for name in names[:2])
    run(repo, sys.executable, "-m", "stages.report", "--out", "reports/thesis")
    lambdas = {row.split(" | ")[3] for row in table_rows(repo / "reports/thesis/results.md")}
    assert {"0", "0.1", "0.2", "1"} <= lambdas  # one row per experiment (and the baseline's default λ)
    assert r"\toprule" in (repo / "reports/thesis/results.tex").read_text(encoding="utf-8")
    for figure in ("forgetting_vs_german", "lambda_sweep"):
        assert (repo / f"reports/thesis/{figure}.png").read_bytes()[:4] == b"\x89PNG"

    # share: a DVC remote for data and models, a git remote for the experiment refs
    run(repo, "git", "init", "-q", "--bare", str(tmp_path / "origin.git"))
    run(repo, "git", "remote", "add", "origin", str(tmp_path / "origin.git"))
    dvc(repo, "remote", "add", "-d", "storage", str(tmp_path / "storage"))
    dvc(repo, "push")
    name = experiments[0]["name"]
    dvc(repo, "exp", "push", "origin", name)
    assert "refs/exps/" in run(repo, "git", "ls-remote", "origin")


def wait_for_queue(repo: Path, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while re.search(r"\b(Queued|Running)\b", dvc(repo, "queue", "status")):
        assert time.monotonic() < deadline, f"the queue did not finish in {timeout_s:.0f} s"
        time.sleep(3)
    assert "Failed" not in dvc(repo, "queue", "status")


def test_every_method_runs_as_an_experiment_two_at_a_time(repo):
    back_to_baseline(repo)
    methods = {"mas": [], "l2": [], "lwf": [], "lora": [], "ewc": ["-S", "adapt.replay_fraction=0.5", "-S",
                                                                 "adapt.replay_samples=10"]}
    for method, extra in methods.items():
        dvc(repo, "exp", "run", "--queue", "-n", f"method-{method}", "-S", f"adapt.method={method}", *extra)
    dvc(repo, "queue", "start", "-j", "2")  # two experiments at once, each in its own copy of the repo
    wait_for_queue(repo)
    shown = json.loads(dvc(repo, "exp", "show", "--json"))
    runs = {rev["name"]: rev["data"] for record in shown for exp in (record.get("experiments") or []) for rev in exp["revs"]}
    for method in methods:
        data = runs[f"method-{method}"]
        assert data["params"]["params.yaml"]["data"]["adapt"]["method"] == method
        metrics = data["metrics"]["reports/metrics.json"]["data"]
        assert 0 <= metrics["adapted"]["de"]["cer"] <= 3 and "forgetting" in metrics, method
        adapt = data["metrics"]["reports/adapt/metrics.json"]["data"]
        assert ("penalty" in adapt.get("train", {})) == (method in ("mas", "l2", "ewc")), method
    importance = runs["method-mas"]["metrics"]["reports/importance/summary.json"]["data"]
    assert importance["kind"] == "mas"
    assert runs["method-lwf"]["metrics"]["reports/adapt/metrics.json"]["data"]["train"]["kd_loss"] > 0


def stage_cmd(repo: Path, stage: str) -> list[str]:
    """A stage's command from dvc.yaml, to run it by hand as a user debugging it would (one process)."""
    cmd = yaml.safe_load((repo / "dvc.yaml").read_text(encoding="utf-8"))["stages"][stage]["cmd"]
    return shlex.split(cmd.replace("${resources.nproc_per_node}", "1"))


@pytest.mark.parametrize(("stage", "damage", "message"), [
    ("eval", lambda repo: (repo / "models/pretrained/model.safetensors").write_bytes(
        (repo / "models/pretrained/model.safetensors").read_bytes()[:5000]),
     "eval: models/pretrained/model.safetensors: not a complete safetensors file"),
    ("adapt", lambda repo: (repo / "data/validated/de/train.tsv").write_text(""),
     "adapt: data/validated/de/train.tsv: empty file"),
    ("adapt", lambda repo: set_params(repo, "adapt.freeze_feature_encoder", False),
     "adapt: models/importance/importance.safetensors does not fit the parameters adapt trains"),
])
def test_a_broken_input_ends_the_stage_with_one_line_that_names_it(repo, stage, damage, message):
    run(repo, "git", "checkout", "--", ".")  # the experiments above left their last run in the workspace
    dvc(repo, "checkout", "--force")
    damage(repo)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(stage_cmd(repo, stage), cwd=repo, env=env, capture_output=True, text=True)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert last.startswith(message) and "run `dvc repro" in last, last
    run(repo, "git", "checkout", "--", ".")
    dvc(repo, "checkout", "--force")
    assert "Data and pipelines are up to date" in dvc(repo, "status")


def set_params(repo: Path, dotted: str, value: object) -> None:
    raw = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    set_key(raw, dotted, value)
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")


def test_a_language_folder_with_validated_tsv_alone_runs_its_grouped_sample_stage(tmp_path):
    """A corpus prepared in the Common Voice layout with no release splits: `sample@nl` depends on validated.tsv
    alone, so DVC runs it (a dependency on the missing train/dev/test.tsv would stop it before it starts)."""
    write_demo_corpus(tmp_path / "corpus", "nl", clips=48, speakers=12, seed=0)
    for name in ("train", "dev", "test"):
        (tmp_path / "corpus" / "nl" / f"{name}.tsv").unlink()
    repo = make_repo(tmp_path / "repo", {"data.common_voice.nl.path": str(tmp_path / "corpus" / "nl")})
    assert stages_run(dvc(repo, "repro", "sample@nl")) == {"sample@nl"}
    assert read_json(repo / "reports/sample/nl.json")["splits_from"] == "grouped"
