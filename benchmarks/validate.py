"""Benchmark: clips per second through the validate stage's clip checks with 1 and with 2 worker processes.

    python -m benchmarks.validate [--corpus data/demo] [--lang nl] [--limit N] [--repeats 2]

Checks every clip named in `<corpus>/<lang>/validated.tsv` with `validate_splits` and the bounds of
`params.yaml`, after one untimed pass that warms the page cache. One worker checks in-process; more
workers include the pool's start-up. When the corpus has no `<lang>/validated.tsv` yet (the demo stage has
not run), the demo corpus is synthesised into a temporary folder with the `demo` params (about 30 s per
1300 clips), and the JSON says so.
"""

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from forgetting.data.corpus import Utterance, read_corpus_tsv
from forgetting.data.validation import Validation, resolve_workers, validate_splits
from forgetting.demo.synth import write_demo_corpus
from forgetting.io import write_json
from forgetting.params import load_params


def time_validation(
    rows: list[Utterance], clips_dir: Path, workers: int, repeats: int, bounds: dict
) -> tuple[list[float], Validation]:
    """Wall-clock seconds of `repeats` (>= 1) validations of `rows` with `workers` processes, and the last result."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = validate_splits({"train": rows}, clips_dir, **bounds, workers=workers, progress=False)
        seconds.append(time.perf_counter() - start)
    return seconds, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path("data/demo"))
    parser.add_argument("--lang", default="nl")
    parser.add_argument("--limit", type=int, default=0, help="check only the first N clips (0 = all)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per worker count; the best is reported")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=Path("reports/bench/validate.json"))
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    load_at_start = os.getloadavg()[0]
    params = load_params()
    bounds = {"min_seconds": params.validate.min_seconds, "max_seconds": params.validate.max_seconds,
              "min_rms": params.validate.min_rms}

    with tempfile.TemporaryDirectory() as tmp:
        corpus, source = args.corpus, str(args.corpus)
        if not (corpus / args.lang / "validated.tsv").is_file():
            corpus, source = Path(tmp), f"demo corpus synthesised in a temporary folder ({args.corpus} missing)"
            write_demo_corpus(corpus, args.lang, params.demo.clips_per_lang, params.demo.speakers, params.seed)
        rows = read_corpus_tsv(corpus / args.lang / "validated.tsv")[: args.limit or None]
        clips_dir = corpus / args.lang / "clips"
        warm = validate_splits({"train": rows}, clips_dir, **bounds, workers=1, progress=False)
        runs = {}
        for workers in args.workers:
            seconds, result = time_validation(rows, clips_dir, workers, args.repeats, bounds)
            if result != warm:
                raise RuntimeError(f"{workers} workers gave a different validation result than 1 worker")
            runs[str(workers)] = {"seconds": [round(s, 4) for s in seconds], "clips_per_s": round(len(rows) / min(seconds), 1)}

    hours = sum(u.duration_s or 0.0 for u in warm.kept["train"]) / 3600
    first, last = (runs[str(w)]["clips_per_s"] for w in (args.workers[0], args.workers[-1]))
    report = {
        "corpus": str(args.corpus),
        "source": source,
        "lang": args.lang,
        "clips": len(rows),
        "kept": len(warm.kept["train"]),
        "audio_hours_kept": round(hours, 4),
        "bounds": bounds,
        "cpu_count": os.cpu_count(),
        "cpus_available": resolve_workers(0),
        "machine": platform.processor() or platform.machine(),
        "load_average_1min_at_start": round(load_at_start, 2),  # other processes sharing the CPUs
        "repeats": args.repeats,
        "runs": runs,
        "speedup": {f"{args.workers[-1]}_over_{args.workers[0]}": round(last / first, 3)},
        "note": "1 worker checks in-process (no pool); more workers include pool start-up; best of repeats after a warm pass",
    }
    write_json(args.out, report)
    rates = ", ".join(f"{w} worker(s) {runs[str(w)]['clips_per_s']} clips/s" for w in args.workers)
    print(f"bench validate: {len(rows)} clips of {source} ({args.lang}): {rates}; "
          f"speed-up {last / first:.2f}x on {report['cpus_available']} CPU(s) -> {args.out}")


if __name__ == "__main__":
    main()
