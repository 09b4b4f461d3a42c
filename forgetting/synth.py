"""The embedded demo corpus: Dutch and German sentences spoken by eSpeak NG, written in the Common Voice layout.

`write_demo_corpus` writes `<out>/<lang>/validated.tsv` (Common Voice's header, tab-separated, unquoted,
UTF-8) and `<out>/<lang>/clips/common_voice_<lang>_<n>.mp3` (48 kHz mono MP3). A speaker is one (eSpeak
voice variant, rate, pitch) combination with its own 128-hex-digit `client_id`; sentences come from
`forgetting/wordlists.py`. All draws come from `random.Random(seed, language)`, so the same arguments give a
byte-identical `validated.tsv`; the clips too, when each call runs in a fresh process (eSpeak carries its
pitch-flutter phase from one utterance to the next and no API call resets it).

Planted defects: one row of each kind per language, at seeded positions, because real releases hold them
and the pipeline must reject them (`DEFECTS`):
- `corrupt_clip`: the clip holds only the first 300 bytes of its MP3 (an interrupted upload; unreadable).
- `missing_clip`: the row names a clip that is not written.
- `empty_sentence`: the sentence field is empty (the clip is fine).
- `too_long`: several sentences spoken as one clip of 70+ words (about 20 to 35 s, far over 10 s).
- `down_voted`: more down-votes than up-votes, and the clip speaks a different sentence than the row says.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import io
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import espeakng_loader
import numpy as np
import soundfile
import soxr

from forgetting.io import atomic_write_text
from forgetting.layout import CORPUS_METADATA, clips_dir
from forgetting.wordlists import LEXICONS, Lexicon

HEADER = ("client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes", "age", "gender",
          "accents", "variant", "locale", "segment")
DEFECTS = ("corrupt_clip", "missing_clip", "empty_sentence", "too_long", "down_voted")
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

# speak_lib.h; with INITIALIZE_DONT_EXIT a wrong data folder is an error instead of exit()
_AUDIO_OUTPUT_SYNCHRONOUS, _INITIALIZE_DONT_EXIT = 2, 0x8000
_POS_CHARACTER, _CHARS_UTF8, _ENDPAUSE, _RATE, _PITCH = 1, 0x1, 0x1000, 1, 3
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

_SLOT = re.compile(r"\{(\w+)\}")


class ESpeak:
    """eSpeak NG from the `espeakng-loader` wheel, driven through ctypes in synchronous mode.

    The library holds one global state per process (voice, parameters, callback): create it through
    `open_espeak()` and use it from one thread.
    """

    def __init__(self) -> None:
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        data_path = espeakng_loader.get_data_path()
        rate_hz = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_path).encode(), _INITIALIZE_DONT_EXIT)
        if rate_hz <= 0:
            raise RuntimeError(f"espeak_Initialize failed with data folder {data_path}: returned {rate_hz}")
        self._lib, self.sample_rate_hz = lib, rate_hz
        self._chunks: list[bytes] = []
        # The C side keeps only a pointer: this reference keeps the callback alive.
        self._callback = _SYNTH_CALLBACK(self._collect)
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav: ctypes._Pointer, samples: int, events: int | None) -> int:
        if samples > 0:
            self._chunks.append(ctypes.string_at(wav, samples * 2))
        return 0  # 0 = go on synthesising

    def synthesise(self, text: str, voice: str, rate_wpm: int, pitch: int, noise_seed: int = 0) -> np.ndarray:
        """`text` spoken by eSpeak voice `voice` (e.g. "nl+f3"): int16 samples at `sample_rate_hz`, shape (samples,).

        The breathy variants (f2, f3, f5) draw noise from eSpeak's own generator, whose state otherwise
        differs from process to process: it is seeded with `noise_seed` first.
        """
        error = self._lib.espeak_SetVoiceByName(voice.encode())
        if error:
            raise RuntimeError(f"eSpeak voice {voice!r}: espeak_SetVoiceByName returned {error}")
        self._lib.espeak_SetParameter(_RATE, rate_wpm, 0)
        self._lib.espeak_SetParameter(_PITCH, pitch, 0)
        self._lib.espeak_ng_SetRandSeed(noise_seed)
        self._chunks = []
        data = text.encode("utf-8")
        error = self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE, None, None)
        if error:
            raise RuntimeError(f"eSpeak voice {voice!r}: espeak_Synth returned {error} for {text!r}")
        samples = np.frombuffer(b"".join(self._chunks), dtype=np.int16)
        if samples.size == 0:
            raise RuntimeError(f"eSpeak voice {voice!r}: no audio for {text!r}")
        return samples


@functools.cache
def open_espeak() -> ESpeak:
    """The process's one eSpeak instance (the library cannot hold two), initialised on first use."""
    return ESpeak()


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


def write_demo_corpus(out: Path, lang: str, clips: int, speakers: int, seed: int) -> DemoSummary:
    """Synthesise `clips` rows for `lang` by `speakers` speakers into `<out>/<lang>`, replacing what was there.

    Every speaker has at least one row; one row of each kind in `DEFECTS` is planted at a seeded position.
    validated.tsv is written last, under a temporary name then renamed, so an interrupted run never leaves
    a complete-looking corpus.
    """
    if lang not in LEXICONS:
        raise ValueError(f"demo language {lang!r}: no word lists (have {', '.join(LEXICONS)})")
    if clips < max(speakers, len(DEFECTS)):
        raise ValueError(f"demo clips_per_lang: {clips} rows cannot hold {speakers} speakers and {len(DEFECTS)} defects")
    lexicon = LEXICONS[lang]
    rnd = random.Random(f"demo-{seed}-{lang}")
    voices = draw_speakers(lang, speakers, rnd)
    weights = [rnd.uniform(0.5, 2.0) for _ in voices]  # uneven speakers, as in a real release
    assignment = list(range(speakers)) + rnd.choices(range(speakers), weights, k=clips - speakers)
    rnd.shuffle(assignment)
    numbers = rnd.sample(range(10_000_000, 100_000_000), clips)
    planted = dict(zip(rnd.sample(range(clips), len(DEFECTS)), DEFECTS, strict=True))

    root, clip_dir = out / lang, clips_dir(out, lang)
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
        sentence = spoken = compose_sentence(lexicon, rnd)
        up_votes, down_votes = rnd.randint(2, 4), rnd.randint(0, 1)
        if kind == "empty_sentence":
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
                     str(up_votes), str(down_votes), speaker.age, speaker.gender, speaker.accent, "", lang, ""))
        if kind:
            defects.append(PlantedDefect(kind, path, line=i + 2))
    _write_metadata(root / CORPUS_METADATA, rows)
    return DemoSummary(lang, root, clips, speakers, audio_s, tuple(defects))


def _write_metadata(path: Path, rows: list[tuple[str, ...]]) -> None:
    """Atomically, in Common Voice's format: `HEADER`, tab-separated, unquoted, UTF-8, `\\n` line ends."""
    lines = ["\t".join(HEADER)]
    for line, row in enumerate(rows, start=2):
        if any(c in field for field in row for c in "\t\r\n"):
            raise ValueError(f"{path} line {line} ({row[1]}): a field holds a tab or line break")
        lines.append("\t".join(row))
    atomic_write_text(path, "\n".join(lines) + "\n")
