"""Stage `demo`: the embedded Dutch and German corpus, synthesised with eSpeak NG in the Common Voice layout.

Writes `<out>/nl/` and `<out>/de/` (validated.tsv + clips/), each replacing what was there. The speakers,
the sentences and the defects planted on purpose are described in `forgetting/demo/synth.py`.
"""

import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from forgetting.demo.synth import write_demo_corpus
from forgetting.layout import LANGUAGES
from stages import cli


def main() -> None:
    parser = cli.parser(__doc__)
    parser.add_argument("--out", type=Path, required=True, help="corpus root: writes <out>/<lang>/{validated.tsv,clips/}")
    args, params = cli.start(parser)
    demo = params.demo

    start = time.perf_counter()
    # One fresh process per language: MP3 encoding is the bottleneck, and eSpeak carries hidden state from
    # one utterance to the next, so only a fresh process makes the clips byte-identical from run to run.
    with ProcessPoolExecutor(max_workers=len(LANGUAGES), max_tasks_per_child=1) as pool:
        futures = [pool.submit(write_demo_corpus, args.out, lang, demo.clips_per_lang, demo.speakers, params.seed,
                               demo.readers_per_sentence) for lang in LANGUAGES]
        summaries = [future.result() for future in futures]
    elapsed_s = time.perf_counter() - start

    for s in summaries:
        planted = ", ".join(f"{d.kind} {d.path} (line {d.line})" for d in s.defects)
        print(f"demo {s.lang}: {s.rows} rows, {s.audio_s / 3600:.2f} h of audio; planted: {planted}")
    counts = " + ".join(f"{s.rows} {s.lang}" for s in summaries)
    print(f"demo: wrote {counts} clips ({demo.speakers} speakers each, {len(summaries[0].defects)} planted defects each) "
          f"to {args.out} in {elapsed_s:.0f} s")


if __name__ == "__main__":
    cli.run(main)
