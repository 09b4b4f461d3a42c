"""Benchmark: the sample stage on a synthetic Common Voice `validated.tsv` of 1,000,000 rows (targets: at most 10 s and
500 MB peak resident memory).

    python -m benchmarks.sample [--rows 1000000] [--speakers 20000] [--baseline-rev REV] [--steps]
                                [--out reports/bench/sample.json]

The corpus, `<tmp>/corpus/de/validated.tsv`, has Common Voice's 13 columns (`forgetting/demo/synth.py` HEADER): speakers
of Pareto-distributed sizes (a heavy tail, as in real releases), sentences read by 1 to 5 speakers each, dealt at
random (so one group links almost every speaker and sentence), `SEGMENT_SHARE` single-word `Benchmark` segment rows
and `LOW_VOTE_SHARE` rows that fail the vote filters. The stage then runs as DVC runs it: `python -m stages.sample
--lang de ...` in a fresh child process, in a folder holding its own params.yaml (the repo's, with
`data.common_voice.de.path` at the corpus and `sample.de.n` = all rows), PYTHONPATH = the repo. Per run: the wall
time and the child's peak resident memory (`os.wait4`, as `getrusage(RUSAGE_CHILDREN)` reports it for one child).

`--baseline-rev REV` runs the stage of revision REV on the same corpus in the same run, from a `git worktree` in
/tmp (removed afterwards), with REV's params.yaml pointing `data.corpus` at the corpus root. `--steps` times the
library calls one by one (read, filter and sample, split, statistics, write) in one fresh process.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml

from forgetting.data.corpus import filter_and_sample, read_corpus_tsv, write_split_tsv
from forgetting.data.splits import overlap, split_grouped, split_statistics
from forgetting.demo.synth import HEADER
from forgetting.demo.wordlists import LEXICONS
from forgetting.io import write_json
from forgetting.params import load_params

REPO = Path(__file__).resolve().parent.parent
LANG = "de"
SEGMENT_SHARE = 0.03  # rows of the single-word Benchmark segment
LOW_VOTE_SHARE = 0.02  # rows with too few up-votes or as many down-votes
READERS = (0.4, 0.25, 0.15, 0.1, 0.1)  # share of sentences read by 1, 2, 3, 4, 5 speakers
SPEAKER_TAIL = 1.1  # Pareto shape of the speaker sizes: the largest holds a few % of all rows
SEGMENT_WORDS = ("Null", "Eins", "Zwei", "Drei", "Vier", "Fünf", "Sechs", "Sieben", "Acht", "Neun", "Ja", "Nein", "Hey")
TARGETS = {"wall_s_max": 10.0, "peak_rss_mb_max": 500.0}


def synthesise_validated(path: Path, rows: int, speakers: int, seed: int) -> dict[str, int | float]:
    """Write `rows` Common Voice rows by `speakers` speakers to `path`; returns what was written (counts, the largest
    speaker's share, the file size in MB)."""
    rng = np.random.default_rng(seed)
    weights = rng.pareto(SPEAKER_TAIL, speakers) + 1
    speaker = rng.permutation(np.repeat(np.arange(speakers), 1 + rng.multinomial(rows - speakers, weights / weights.sum())))
    readers = rng.choice(np.arange(1, len(READERS) + 1), size=rows, p=READERS)
    sentence = rng.permutation(np.repeat(np.arange(rows), readers)[:rows])
    segment = rng.random(rows) < SEGMENT_SHARE
    low_vote = rng.random(rows) < LOW_VOTE_SHARE
    lexicon = LEXICONS[LANG]
    words = [*(n.capitalize() for nouns in lexicon.nouns.values() for n in nouns), *(a for a, _ in lexicon.adjectives),
             *lexicon.transitive_verbs, *lexicon.intransitive_verbs, *lexicon.adverbs]
    texts, used = {}, np.unique(sentence[~segment])
    for t, length, punctuation in zip(used.tolist(), rng.integers(4, 12, used.size).tolist(),
                                      rng.choice([".", "?", "!", ","], used.size, p=[0.8, 0.1, 0.05, 0.05]).tolist(),
                                      strict=True):
        picked = [words[i] for i in rng.integers(0, len(words), length)]
        if punctuation == ",":  # a comma inside, a full stop at the end
            picked[length // 2] += ","
            punctuation = "."
        texts[t] = " ".join(picked)[0].upper() + " ".join(picked)[1:] + punctuation
    clients = [hashlib.sha512(f"speaker-{seed}-{s}".encode()).hexdigest() for s in range(speakers)]
    ages = ("", "teens", "twenties", "thirties", "fourties", "fifties")
    genders = ("", "male_masculine", "female_feminine")
    numbers = rng.permutation(rows) + 10_000_000
    up = np.where(low_vote & (rng.random(rows) < 0.5), 1, rng.integers(2, 6, rows))  # half of them: one up-vote
    down = np.where(low_vote & (up > 1), up, rng.integers(0, 2, rows))  # the other half: as many down-votes
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("\t".join(HEADER) + "\n")
        for i, (s, t, seg, n, u, d) in enumerate(zip(speaker.tolist(), sentence.tolist(), segment.tolist(),
                                                      numbers.tolist(), up.tolist(), down.tolist(), strict=True)):
            said = SEGMENT_WORDS[t % len(SEGMENT_WORDS)] if seg else texts[t]
            f.write(f"{clients[s]}\tcommon_voice_{LANG}_{n}.mp3\t{hashlib.sha256(said.encode()).hexdigest()}\t{said}\t\t"
                    f"{u}\t{d}\t{ages[s % len(ages)]}\t{genders[s % len(genders)]}\t\t\t{LANG}\t"
                    f"{'Benchmark' if seg else ''}\n")
            if i % 100_000 == 0 and i:
                print(f"bench sample: {i}/{rows} rows written", flush=True)
    sentences = set(texts.values()) | {SEGMENT_WORDS[t % len(SEGMENT_WORDS)] for t in sentence[segment].tolist()}
    return {"rows": rows, "speakers": speakers, "sentences": len(sentences),
            "segment_rows": int(segment.sum()), "low_vote_rows": int(low_vote.sum()),
            "largest_speaker_share": round(float(np.bincount(speaker).max() / rows), 4),
            "file_mb": round(path.stat().st_size / 2**20, 1)}


def run_stage(code: Path, workdir: Path, params: dict) -> dict:
    """Run the sample stage of the checkout `code` in `workdir` (which gets `params` as its params.yaml) in a fresh
    child process; its wall time, peak resident memory, exit status, output tail and the metrics it wrote."""
    workdir.mkdir(parents=True)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True), encoding="utf-8")
    command = [sys.executable, "-m", "stages.sample", "--lang", LANG, "--out", str(workdir / "sampled"),
               "--metrics", str(workdir / "sample.json")]
    log = workdir / "stage.log"
    with open(log, "w") as output:
        start = time.perf_counter()
        child = subprocess.Popen(command, cwd=workdir, env={**os.environ, "PYTHONPATH": str(code)}, stdout=output,
                                 stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        wall_s = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: Popen must not wait for it again
    metrics = workdir / "sample.json"
    return {"command": " ".join(["python", *command[1:]]), "returncode": child.returncode, "wall_s": round(wall_s, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux reports KiB
            "output_tail": log.read_text(encoding="utf-8", errors="replace")[-1500:],
            "metrics": json.loads(metrics.read_text(encoding="utf-8")) if metrics.is_file() else None}


def time_steps(validated: Path, params_path: Path, out: Path) -> dict:
    """Seconds of each library call of the stage on `validated`, with the params of `params_path`, and this
    process's peak resident memory at the end (run it in a fresh process)."""
    params = load_params(params_path)
    lang = params.sample.language(LANG)
    laps = [("start", time.perf_counter())]
    rows = read_corpus_tsv(validated)
    gc.freeze()  # as the stage does
    laps.append(("read_corpus_tsv", time.perf_counter()))
    sample = filter_and_sample(rows, lang.alphabet, params.sample.min_up_votes, params.sample.include_segments, lang.n,
                               seed=f"{params.seed}-{LANG}")
    laps.append(("filter_and_sample", time.perf_counter()))
    splits = split_grouped(sample.sampled, vars(params.sample.split), params.sample.split_tolerance,
                           params.sample.max_speaker_share, seed=params.seed)
    laps.append(("split_grouped", time.perf_counter()))
    statistics, shared = split_statistics(splits.splits), overlap(splits.splits)
    laps.append(("split_statistics_and_overlap", time.perf_counter()))
    for name, utterances in splits.splits.items():
        write_split_tsv(out / f"{name}.tsv", utterances)
    laps.append(("write_split_tsv", time.perf_counter()))
    return {"seconds": {step: round(t - laps[i][1], 2) for i, (step, t) in enumerate(laps[1:])},
            "total_s": round(laps[-1][1] - laps[0][1], 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rows_read": len(rows), "dropped": dict(sample.dropped), "sampled": len(sample.sampled),
            "split_dropped": dict(splits.dropped), "splits": statistics, "overlap": shared}


def stage_params(rows: int, corpus: Path) -> dict:
    """The repo's params.yaml with the German corpus at `corpus` and a sample of all `rows`."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["data"]["common_voice"][LANG]["path"] = str(corpus / LANG)
    params["sample"][LANG]["n"] = rows
    return params


def baseline(rev: str, rows: int, corpus: Path, tmp: Path) -> dict:
    """The stage of revision `rev` on `corpus`, run from a git worktree (REV's params.yaml, the German corpus at
    `corpus`: `data.common_voice.de.path`, or `data.corpus` for revisions before the data sections)."""
    tree = tmp / "baseline-tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), rev], check=True, capture_output=True)
    try:
        params = yaml.safe_load(subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:params.yaml"], check=True,
                                               capture_output=True, text=True).stdout)
        if "common_voice" in params["data"]:
            params["data"]["common_voice"][LANG]["path"] = str(corpus / LANG)
        else:
            params["data"]["corpus"] = str(corpus)
        params["sample"][LANG]["n"] = rows
        commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], check=True, capture_output=True,
                                text=True).stdout.strip()
        return {"rev": rev, "commit": commit, **run_stage(tree, tmp / "baseline", params)}
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--speakers", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0, help="of the synthetic corpus")
    parser.add_argument("--baseline-rev", help="also run the stage of this git revision, from a worktree in /tmp")
    parser.add_argument("--steps", action="store_true", help="also time the library calls one by one")
    parser.add_argument("--out", type=Path, default=REPO / "reports/bench/sample.json")
    args = parser.parse_args()
    if not 1 <= args.speakers <= args.rows:
        parser.error(f"--speakers must be in [1, --rows], got {args.speakers}")
    load_at_start = os.getloadavg()[0]
    report: dict = {"machine": {"cpu_count": os.cpu_count(), "cpus_available": len(os.sched_getaffinity(0)),
                                "processor": platform.processor() or platform.machine(),
                                "load_average_1min_at_start": round(load_at_start, 2)},  # other processes on the CPUs
                    "targets": TARGETS}
    with tempfile.TemporaryDirectory(prefix="bench-sample-") as tmp:
        corpus = Path(tmp) / "corpus"
        (corpus / LANG).mkdir(parents=True)
        start = time.perf_counter()
        report["corpus"] = synthesise_validated(corpus / LANG / "validated.tsv", args.rows, args.speakers, args.seed)
        report["corpus"]["synthesis_s"] = round(time.perf_counter() - start, 1)
        params = stage_params(args.rows, corpus)
        report["stage"] = run_stage(REPO, Path(tmp) / "stage", params)
        if args.baseline_rev:
            report["baseline"] = old = baseline(args.baseline_rev, args.rows, corpus, Path(tmp))
            if old["returncode"] == 0 and report["stage"]["returncode"] == 0:
                report["stage_over_baseline"] = {"wall": round(report["stage"]["wall_s"] / old["wall_s"], 3),
                                                 "peak_rss": round(report["stage"]["peak_rss_mb"] / old["peak_rss_mb"], 3)}
        if args.steps:
            (Path(tmp) / "steps").mkdir()
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                report["steps"] = pool.submit(time_steps, corpus / LANG / "validated.tsv", Path(tmp) / "stage" / "params.yaml",
                                              Path(tmp) / "steps").result()
    write_json(args.out, report)
    runs = [("stage", report["stage"]), *([("baseline", report["baseline"])] if args.baseline_rev else [])]
    print("bench sample: " + "; ".join(f"{name}: exit {r['returncode']}, {r['wall_s']} s, {r['peak_rss_mb']} MB"
                                       for name, r in runs) + f" -> {args.out}")
    if any(r["returncode"] != 0 for _, r in runs):
        raise SystemExit("bench sample: a stage run failed; see output_tail in the report")


if __name__ == "__main__":
    main()
