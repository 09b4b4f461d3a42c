"""The embedded demo corpus: Dutch and German sentences spoken by eSpeak NG, written in the Common Voice layout.

`write_demo_corpus` writes `<out>/<lang>/validated.tsv` (Common Voice's header, tab-separated, unquoted,
UTF-8), the release's official splits `train.tsv`, `dev.tsv` and `test.tsv` (`official_splits`), and
`<out>/<lang>/clips/common_voice_<lang>_<n>.mp3` (48 kHz mono MP3). A speaker is one (eSpeak voice variant, rate,
pitch) combination with its own 128-hex-digit `client_id`; speakers record unequal numbers of clips (log-normal
weights, as real releases are heavy-tailed). Sentences come from `forgetting/demo/wordlists.py`, and as in Common Voice
a sentence is read by several speakers: `readers_per_sentence` on average, so splits must keep sentences apart as
well as speakers. All draws come from `random.Random(seed, language)`, so the same arguments give byte-identical
metadata files; the clips too, when each call runs in a fresh process (eSpeak carries its pitch-flutter phase from
one utterance to the next and no API call resets it).

Planted defects: one row of each kind per language, at seeded positions, because real releases hold them
and the pipeline must reject them (`DEFECTS`):
- `corrupt_clip`: the clip holds only the first 300 bytes of its MP3 (an interrupted upload; unreadable).
- `missing_clip`: the row names a clip that is not written.
- `empty_sentence`: the sentence field is empty (the clip is fine).
- `too_long`: several sentences spoken as one clip of 70+ words (about 20 to 35 s, far over 10 s).
- `down_voted`: more down-votes than up-votes, and the clip speaks a different sentence than the row says.
- `segment`: a single number word in Common Voice's `Benchmark` segment (a non-empty `segment` column), which the
  sample stage leaves out unless `sample.include_segments`.
"""

from __future__ import annotations

import hashlib
import io
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

from forgetting.data.corpus import normalise_text
from forgetting.demo.espeak import open_espeak
from forgetting.demo.wordlists import LEXICONS, Lexicon
from forgetting.io import atomic_write_text
from forgetting.layout import SPLITS, corpus_clips, corpus_metadata

HEADER = ("client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes", "age", "gender",
          "accents", "variant", "locale", "segment")
DEFECTS = ("corrupt_clip", "missing_clip", "empty_sentence", "too_long", "down_voted", "segment")
OFFICIAL_SPLITS = {"test": 0.1, "dev": 0.1}  # the release's dev and test shares; train holds the rest
CLIP_RATE_HZ = 48_000
VARIANTS = ("f1", "f2", "f3", "f4", "f5", "m1", "m2", "m3", "m4", "m5", "m6", "m7")  # in espeak-ng-data/voices/!v
RATES_WPM = range(130, 201, 5)
PITCHES = range(30, 71, 5)  # eSpeak pitch 0..100, 50 = the voice's own
AGES = ("", "teens", "twenties", "thirties", "fourties", "fifties", "sixties")  # Common Voice's spelling
ACCENTS = {"nl": ("", "Nederlands Nederlands", "Belgisch Nederlands"),
           "de": ("", "Deutschland Deutsch", "Österreichisches Deutsch", "Schweizerdeutsch")}
CORRUPT_CLIP_BYTES = 300
LONG_CLIP_WORDS = 70
PROGRESS_INTERVAL_S = 5.0
MIN_CLIP_S = 1.5  # a short sentence at a fast rate lasts 0.9 s: pad it, so only planted rows fail validation
HEADROOM = 0.8  # eSpeak peaks near int16 full scale; resampling and MP3 encoding would overshoot it
_SLOT = re.compile(r"\{(\w+)\}")

@dataclass(frozen=True)
class Speaker:
    """One demo speaker: an eSpeak voice variant at a rate and pitch, with Common Voice demographics."""

    client_id: str  # sha512 hex of language, variant, rate and pitch (128 hex digits, as Common Voice's)
    voice: str  # eSpeak voice name, "nl+f3"
    rate_wpm: int
    pitch: int  # eSpeak pitch 0..100
    age: str
    gender: str
    accent: str


@dataclass(frozen=True)
class PlantedDefect:
    """A row that the pipeline must reject; `line` is its 1-based line in validated.tsv (header = 1)."""

    kind: str  # one of DEFECTS
    path: str
    line: int


@dataclass(frozen=True)
class DemoSummary:
    """What `write_demo_corpus` wrote for one language."""

    lang: str
    root: Path  # <out>/<lang>
    rows: int
    speakers: int
    audio_s: float  # total duration of the clips written, corrupt one included at full length
    defects: tuple[PlantedDefect, ...]


def draw_speakers(lang: str, count: int, rnd: random.Random) -> list[Speaker]:
    """`count` distinct speakers; the variants are dealt in a shuffled round so each is used before any repeats."""
    combinations = len(VARIANTS) * len(RATES_WPM) * len(PITCHES)
    if not 1 <= count <= combinations:
        raise ValueError(f"demo speakers: need 1 to {combinations} (variant, rate, pitch) combinations, got {count}")
    variants = rnd.sample(VARIANTS, len(VARIANTS))
    speakers: dict[str, Speaker] = {}
    while len(speakers) < count:
        variant, rate_wpm, pitch = variants[len(speakers) % len(variants)], rnd.choice(RATES_WPM), rnd.choice(PITCHES)
        client_id = hashlib.sha512(f"{lang}+{variant}|{rate_wpm}|{pitch}".encode()).hexdigest()
        gender = "" if rnd.random() < 0.2 else {"f": "female_feminine", "m": "male_masculine"}[variant[0]]
        speakers.setdefault(client_id, Speaker(client_id, f"{lang}+{variant}", rate_wpm, pitch, rnd.choice(AGES), gender,
                                               rnd.choice(ACCENTS[lang])))
    return list(speakers.values())


def compose_sentence(lexicon: Lexicon, rnd: random.Random) -> str:
    """One sentence of 3 to 8 words from a weighted template of `lexicon`, its first letter upper-case."""
    weights = [weight for weight, _ in lexicon.templates]
    while True:
        template = rnd.choices(lexicon.templates, weights)[0][1]
        text = _SLOT.sub(lambda slot, template=template: _fill_slot(slot.group(1), lexicon, rnd, template), template)
        if 3 <= len(text.split()) <= 8:
            first = next(i for i, c in enumerate(text) if c.isalpha())
            return text[:first] + text[first].upper() + text[first + 1:]


def _fill_slot(slot: str, lexicon: Lexicon, rnd: random.Random, template: str) -> str:
    if slot.startswith("np_"):
        return _noun_phrase(lexicon, rnd, slot.removeprefix("np_"))
    if slot == "pp":
        if rnd.random() < 0.2:
            return f"{rnd.choice(lexicon.place_prepositions)} {rnd.choice(lexicon.places)}"
        phrase = f"{rnd.choice(lexicon.prepositions)} {_noun_phrase(lexicon, rnd, 'dat')}"
        for long, short in lexicon.contractions.items():
            if phrase.startswith(f"{long} "):
                return short + phrase.removeprefix(long)
        return phrase
    if slot == "adj":
        return rnd.choice(lexicon.adjectives)[0]
    if slot == "noun":
        return rnd.choice([noun for nouns in lexicon.nouns.values() for noun in nouns])
    choices = {"vt": lexicon.transitive_verbs, "vi": lexicon.intransitive_verbs, "adv": lexicon.adverbs,
               "degree": lexicon.degrees, "wh": lexicon.question_words, "name": lexicon.names, "num": lexicon.numbers,
               "plural": lexicon.plurals, "interj": lexicon.interjections, "daypart": lexicon.day_parts}
    if slot not in choices or not choices[slot]:
        raise ValueError(f"template {template!r}: unknown or empty slot {{{slot}}}")
    return rnd.choice(choices[slot])


def _noun_phrase(lexicon: Lexicon, rnd: random.Random, case: str) -> str:
    """A name, or determiner + optional adjective + noun, inflected for `case` (nom, acc, dat)."""
    if rnd.random() < 0.15:
        return rnd.choice(lexicon.names)
    gender, noun = rnd.choice([(gender, noun) for gender, nouns in lexicon.nouns.items() for noun in nouns])
    determiner = rnd.choices(lexicon.determiners, [d.weight for d in lexicon.determiners])[0]
    article, ending = determiner.forms[(case, gender)]
    if rnd.random() < 0.35:
        predicative, stem = rnd.choice(lexicon.adjectives)
        return f"{article} {stem + ending if ending else predicative} {noun}"
    return f"{article} {noun}"


def to_clip_rate(samples: np.ndarray, rate_hz: int) -> np.ndarray:
    """int16 samples at `rate_hz` as float32 at 48 kHz (Common Voice's rate), led by silence up to `MIN_CLIP_S`."""
    audio = np.clip(soxr.resample(samples.astype(np.float32) * (HEADROOM / 32768), rate_hz, CLIP_RATE_HZ), -1.0, 1.0)
    return np.pad(audio, (max(0, round(MIN_CLIP_S * CLIP_RATE_HZ) - audio.size), 0))


def encode_mp3(audio: np.ndarray) -> bytes:
    """48 kHz mono float audio, shape (samples,), as MP3 bytes (libsndfile's LAME defaults)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, CLIP_RATE_HZ, format="MP3")
    return buffer.getvalue()


def draw_sentences(lexicon: Lexicon, clips: int, readers_per_sentence: float, rnd: random.Random) -> list[str]:
    """One sentence per clip: `clips / readers_per_sentence` distinct sentences (distinct once normalised), each read
    at least once, the other readings spread over them at random, in random order."""
    distinct = max(1, round(clips / readers_per_sentence))
    pool: dict[str, str] = {}
    while len(pool) < distinct:
        sentence = compose_sentence(lexicon, rnd)
        pool.setdefault(normalise_text(sentence), sentence)
    sentences = list(pool.values())
    readings = sentences + rnd.choices(sentences, k=clips - distinct)
    rnd.shuffle(readings)
    return readings


def write_demo_corpus(out: Path, lang: str, clips: int, speakers: int, seed: int,
                      readers_per_sentence: float = 1.0) -> DemoSummary:
    """Synthesise `clips` rows for `lang` by `speakers` speakers into `<out>/<lang>`, replacing what was there.

    Every speaker has at least one row; one row of each kind in `DEFECTS` is planted at a seeded position. The
    metadata files are written last, each under a temporary name then renamed, validated.tsv last of all, so an
    interrupted run never leaves a complete-looking corpus.
    """
    if lang not in LEXICONS:
        raise ValueError(f"demo language {lang!r}: no word lists (have {', '.join(LEXICONS)})")
    if clips < max(speakers, len(DEFECTS)):
        raise ValueError(f"demo clips_per_lang: {clips} rows cannot hold {speakers} speakers and {len(DEFECTS)} defects")
    lexicon = LEXICONS[lang]
    rnd = random.Random(f"demo-{seed}-{lang}")
    voices = draw_speakers(lang, speakers, rnd)
    weights = [rnd.lognormvariate(0.0, 0.6) for _ in voices]  # uneven speakers, as in a real release
    assignment = list(range(speakers)) + rnd.choices(range(speakers), weights, k=clips - speakers)
    rnd.shuffle(assignment)
    numbers = rnd.sample(range(10_000_000, 100_000_000), clips)
    planted = dict(zip(rnd.sample(range(clips), len(DEFECTS)), DEFECTS, strict=True))
    readings = draw_sentences(lexicon, clips, readers_per_sentence, rnd)

    root = out / lang
    clip_dir = corpus_clips(root)
    shutil.rmtree(root, ignore_errors=True)
    clip_dir.mkdir(parents=True)
    espeak = open_espeak()
    rows, defects, audio_s = [], [], 0.0
    next_report = (start := time.monotonic()) + PROGRESS_INTERVAL_S
    for i in range(clips):
        if (now := time.monotonic()) >= next_report:
            print(f"demo {lang}: {i}/{clips} clips, {i / (now - start):.0f} clips/s", flush=True)
            next_report = now + PROGRESS_INTERVAL_S
        speaker, kind, path = voices[assignment[i]], planted.get(i), f"common_voice_{lang}_{numbers[i]}.mp3"
        sentence = spoken = readings[i]
        up_votes, down_votes, segment = rnd.randint(2, 4), rnd.randint(0, 1), ""
        if kind == "segment":
            sentence = spoken = rnd.choice(lexicon.numbers).capitalize()
            segment = "Benchmark"
        elif kind == "empty_sentence":
            sentence = ""
        elif kind == "too_long":
            while len(sentence.split()) < LONG_CLIP_WORDS:
                sentence = spoken = f"{sentence} {compose_sentence(lexicon, rnd)}"
        elif kind == "down_voted":  # and the clip says something else, the usual reason for down-votes
            spoken, up_votes = compose_sentence(lexicon, rnd), rnd.randint(0, 1)
            down_votes = up_votes + rnd.randint(1, 2)
        if kind != "missing_clip":
            samples = espeak.synthesise(spoken, speaker.voice, speaker.rate_wpm, speaker.pitch, noise_seed=numbers[i])
            audio = to_clip_rate(samples, espeak.sample_rate_hz)
            audio_s += audio.size / CLIP_RATE_HZ
            data = encode_mp3(audio)
            (clip_dir / path).write_bytes(data[:CORRUPT_CLIP_BYTES] if kind == "corrupt_clip" else data)
        rows.append((speaker.client_id, path, hashlib.sha256(sentence.encode()).hexdigest(), sentence, "",
                     str(up_votes), str(down_votes), speaker.age, speaker.gender, speaker.accent, "", lang, segment))
        if kind:
            defects.append(PlantedDefect(kind, path, line=i + 2))
    for name, split_rows in official_splits(rows).items():
        _write_metadata(corpus_metadata(root, name), split_rows)
    _write_metadata(corpus_metadata(root), rows)
    return DemoSummary(lang, root, clips, speakers, audio_s, tuple(defects))


def official_splits(rows: list[tuple[str, ...]]) -> dict[str, list[tuple[str, ...]]]:
    """The release's own train/dev/test, as Common Voice's CorporaCreator makes them: one recording per sentence (the
    first, by speaker), speakers from the fewest recordings up filling test, then dev (`OFFICIAL_SPLITS` of those
    recordings each), train the rest. Disjoint by speaker and by sentence; rows in validated.tsv's order."""
    recordings = {client: sum(row[0] == client for row in rows) for client in {row[0] for row in rows}}
    first: dict[str, tuple[str, ...]] = {}
    for row in sorted(rows, key=lambda row: (recordings[row[0]], row[0])):
        first.setdefault(normalise_text(row[3]), row)
    kept = set(first.values())
    speakers = sorted(recordings, key=lambda client: (recordings[client], client))
    per_speaker = {client: [row for row in rows if row in kept and row[0] == client] for client in speakers}
    splits: dict[str, set[str]] = {name: set() for name in SPLITS}
    filled, order = dict.fromkeys(SPLITS, 0), iter(speakers)
    for name, share in OFFICIAL_SPLITS.items():
        while filled[name] < share * len(kept) and (client := next(order, None)) is not None:
            splits[name].add(client)
            filled[name] += len(per_speaker[client])
    splits["train"] = set(speakers) - splits["dev"] - splits["test"]
    return {name: [row for row in rows if row in kept and row[0] in splits[name]] for name in SPLITS}


def _write_metadata(path: Path, rows: list[tuple[str, ...]]) -> None:
    """Atomically, in Common Voice's format: `HEADER`, tab-separated, unquoted, UTF-8, `\\n` line ends."""
    lines = ["\t".join(HEADER)]
    for line, row in enumerate(rows, start=2):
        if any(c in field for field in row for c in "\t\r\n"):
            raise ValueError(f"{path} line {line} ({row[1]}): a field holds a tab or line break")
        lines.append("\t".join(row))
    atomic_write_text(path, "\n".join(lines) + "\n")
