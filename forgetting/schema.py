"""The typed schema of `params.yaml`: one frozen dataclass per section, each checking its own ranges and naming the
dotted key it refuses (`adapt.ewc_lambda: must be >= 0, got -1.0`). `forgetting.params` reads the file into them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from forgetting.errors import InputError
from forgetting.layout import LANGUAGES, SPLITS


class ParamsError(InputError):
    """A params value that no stage may run with; the message starts with the dotted key."""


def require(ok: bool, key: str, message: str) -> None:
    """Raise a ParamsError naming `key` unless `ok`."""
    if not ok:
        raise ParamsError(f"{key}: {message}")


@dataclass(frozen=True)
class ResourcesParams:
    nproc_per_node: int  # processes per machine for pretrain, importance, adapt and eval (torchrun); 1 = one process
    reproducible_cpu: bool  # pin the CPU's arithmetic (forgetting/machine.py): the same bytes on any x86-64 CPU
    cpu_threads: int | None  # torch threads per process; None = torch's own choice (not with reproducible_cpu)

    def check(self, key: str) -> None:
        require(self.nproc_per_node >= 1, f"{key}.nproc_per_node", f"must be >= 1, got {self.nproc_per_node}")
        require(self.cpu_threads is None or self.cpu_threads >= 1, f"{key}.cpu_threads",
                f"must be >= 1 or null, got {self.cpu_threads}")
        require(self.cpu_threads is not None or not self.reproducible_cpu, f"{key}.cpu_threads",
                "must be set with reproducible_cpu: the order of the parallel sums depends on the thread count")


@dataclass(frozen=True)
class CommonVoiceSource:
    """A language read from a Common Voice-layout folder: `<path>/{validated,train,dev,test}.tsv` and `<path>/clips/`."""

    path: str

    def check(self, key: str) -> None:
        require(bool(self.path.strip()), f"{key}.path", "must name a folder")


@dataclass(frozen=True)
class DatasetSource:
    """A language read from a Hugging Face audio dataset on disk (`save_to_disk` folder or parquet files); the sample
    stage writes the clips it draws to `clips`, from where the rest of the pipeline reads them."""

    path: str
    clips: str
    audio: str  # the Audio column
    sentence: str  # the text column
    client_id: str | None  # the speaker column; None when the dataset has none (each row is then its own speaker)
    split_names: dict[str, str]  # our split name -> the dataset's split name
    splits: Literal["grouped", "official"]  # ours, drawn from all its rows | the dataset's own (split_names)

    def check(self, key: str) -> None:
        for name in ("path", "clips", "audio", "sentence"):
            require(bool(getattr(self, name).strip()), f"{key}.{name}", "must not be empty")
        require(sorted(self.split_names) == sorted(SPLITS), f"{key}.split_names",
                 f"must map each of {list(SPLITS)} to a split of the dataset, got {self.split_names}")


GROUPS = ("common_voice", "common_voice_official", "datasets")


@dataclass(frozen=True)
class DataParams:
    """Where each language comes from, and whose splits it uses: every language of the pipeline in exactly one group.
    dvc.yaml runs stage `sample` for each `common_voice` language (splits drawn from `validated.tsv`: it depends on
    that file alone), `sample_official` for each `common_voice_official` one (the release's `train/dev/test.tsv`, the
    three files it depends on) and `sample_hf` for each dataset language."""

    common_voice: dict[str, CommonVoiceSource]
    common_voice_official: dict[str, CommonVoiceSource]
    datasets: dict[str, DatasetSource]

    def check(self, key: str) -> None:
        for lang in LANGUAGES:
            groups = [group for group in GROUPS if lang in getattr(self, group)]
            require(len(groups) == 1, f"{key}.common_voice", f"language {lang!r} must be in exactly one of "
                     f"{', '.join(f'data.{g}' for g in GROUPS)}, is in {groups or 'none'}")
        for group in GROUPS:
            unknown = sorted(set(getattr(self, group)) - set(LANGUAGES))
            require(not unknown, f"{key}.{group}.{unknown[0] if unknown else ''}",
                     f"not a language of the pipeline ({', '.join(LANGUAGES)})")

    def group(self, lang: str) -> str:
        """The group `lang` is in (`common_voice`, `common_voice_official`, `datasets`)."""
        for group in GROUPS:
            if lang in getattr(self, group):
                return group
        raise ParamsError(f"data: language {lang!r} is in none of {', '.join(f'data.{g}' for g in GROUPS)}")

    def source(self, lang: str) -> CommonVoiceSource | DatasetSource:
        """The source of `lang`."""
        return getattr(self, self.group(lang))[lang]

    def splits(self, lang: str) -> Literal["grouped", "official"]:
        """Whose splits `lang` uses: ours (grouped, disjoint by speaker and sentence) or its release's (official)."""
        if lang in self.datasets:
            return self.datasets[lang].splits
        return "official" if lang in self.common_voice_official else "grouped"


@dataclass(frozen=True)
class DemoParams:
    clips_per_lang: int
    speakers: int
    readers_per_sentence: float  # mean readers of a sentence, as in Common Voice (each sentence is read 1 to 3 times)

    def check(self, key: str) -> None:
        require(self.clips_per_lang >= 10, f"{key}.clips_per_lang", f"must be >= 10, got {self.clips_per_lang}")
        require(self.speakers >= 3, f"{key}.speakers", f"must be >= 3 for three speaker-disjoint splits, got {self.speakers}")
        require(self.clips_per_lang >= self.speakers, f"{key}.clips_per_lang",
                 f"must be >= demo.speakers ({self.speakers}) so every speaker has a clip, got {self.clips_per_lang}")
        require(1 <= self.readers_per_sentence <= 3, f"{key}.readers_per_sentence",
                 f"must be in [1, 3], got {self.readers_per_sentence}")


@dataclass(frozen=True)
class LanguageSample:
    n: int
    alphabet: str

    def check(self, key: str) -> None:
        require(self.n >= 1, f"{key}.n", f"must be >= 1, got {self.n}")
        require(bool(self.alphabet) and " " not in self.alphabet, f"{key}.alphabet", "must be letters, without spaces")


@dataclass(frozen=True)
class SplitFractions:
    train: float
    dev: float
    test: float

    def check(self, key: str) -> None:
        for name in ("train", "dev", "test"):
            value = getattr(self, name)
            require(0 < value < 1, f"{key}.{name}", f"must be in (0, 1), got {value}")
        total = self.train + self.dev + self.test
        require(math.isclose(total, 1.0, abs_tol=1e-6), key, f"train + dev + test must be 1, got {total:g}")


@dataclass(frozen=True)
class SampleParams:
    min_up_votes: int
    include_segments: bool  # Common Voice's single-word Benchmark rows (non-empty `segment`)
    split: SplitFractions
    split_tolerance: float  # grouped splits: each within this fraction of its target
    max_speaker_share: float  # grouped splits: the largest speaker's share of dev and of test
    nl: LanguageSample
    de: LanguageSample

    def check(self, key: str) -> None:
        require(self.min_up_votes >= 0, f"{key}.min_up_votes", f"must be >= 0, got {self.min_up_votes}")
        require(0 < self.split_tolerance < 1, f"{key}.split_tolerance", f"must be in (0, 1), got {self.split_tolerance}")
        require(0 < self.max_speaker_share <= 1, f"{key}.max_speaker_share",
                 f"must be in (0, 1], got {self.max_speaker_share}")

    def language(self, lang: str) -> LanguageSample:
        if lang not in LANGUAGES:
            raise ParamsError(f"sample.{lang}: no such language section (have {', '.join(LANGUAGES)})")
        return getattr(self, lang)


@dataclass(frozen=True)
class ValidateParams:
    min_seconds: float
    max_seconds: float
    min_rms: float
    max_reject_fraction: float
    workers: int

    def check(self, key: str) -> None:
        require(self.min_seconds >= 0, f"{key}.min_seconds", f"must be >= 0, got {self.min_seconds}")
        require(self.max_seconds > self.min_seconds, f"{key}.max_seconds",
                 f"must exceed min_seconds ({self.min_seconds}), got {self.max_seconds}")
        require(self.min_rms >= 0, f"{key}.min_rms", f"must be >= 0, got {self.min_rms}")
        require(0 <= self.max_reject_fraction <= 1, f"{key}.max_reject_fraction",
                 f"must be in [0, 1], got {self.max_reject_fraction}")
        require(self.workers >= 0, f"{key}.workers", f"must be >= 0 (0 = all cores), got {self.workers}")


@dataclass(frozen=True)
class ModelParams:
    name: str
    config: dict[str, Any]
    head: Literal["by_token", "fresh"]  # a start checkpoint's CTC head for other characters: keep the shared rows, or none

    def check(self, key: str) -> None:
        require(bool(self.name.strip()), f"{key}.name", "must be 'tiny', a checkpoint folder or a hub id")


@dataclass(frozen=True)
class TrainParams:
    """One training run of the shared core (pretrain, adapt)."""

    seed: int  # the training seed: initialisation, batch order, dropout; the data seed is the top-level `seed`
    lr: float
    warmup_ratio: float
    epochs: float | None
    max_steps: int | None
    batch_size: int
    effective_batch_size: int
    weight_decay: float
    max_grad_norm: float
    freeze_feature_encoder: bool
    dropout: float
    layerdrop: float
    mask_time_prob: float
    mask_feature_prob: float  # SpecAugment's channel masking; it overrides a checkpoint's own value
    fp16: bool
    bf16: bool
    eval_steps: int
    early_stopping_patience: int
    dataloader_workers: int
    save_total_limit: int
    max_skipped_fraction: float  # steps with a non-finite loss or gradient, skipped; more than this fraction stop the run

    def check(self, key: str) -> None:
        require(self.seed >= 0, f"{key}.seed", f"must be >= 0, got {self.seed}")
        require(self.lr > 0, f"{key}.lr", f"must be > 0, got {self.lr}")
        require((self.epochs is None) != (self.max_steps is None), f"{key}.epochs",
                 f"set exactly one of epochs and max_steps, got epochs={self.epochs}, max_steps={self.max_steps}")
        require(self.epochs is None or self.epochs > 0, f"{key}.epochs", f"must be > 0, got {self.epochs}")
        require(self.max_steps is None or self.max_steps > 0, f"{key}.max_steps", f"must be > 0, got {self.max_steps}")
        for name in ("warmup_ratio", "dropout", "layerdrop", "mask_time_prob", "mask_feature_prob", "max_skipped_fraction"):
            value = getattr(self, name)
            require(0 <= value < 1, f"{key}.{name}", f"must be in [0, 1), got {value}")
        for name in ("batch_size", "effective_batch_size", "eval_steps", "save_total_limit"):
            value = getattr(self, name)
            require(value >= 1, f"{key}.{name}", f"must be >= 1, got {value}")
        for name in ("weight_decay", "max_grad_norm", "early_stopping_patience", "dataloader_workers"):
            value = getattr(self, name)
            require(value >= 0, f"{key}.{name}", f"must be >= 0, got {value}")
        require(not (self.fp16 and self.bf16), f"{key}.fp16", "fp16 and bf16 exclude each other")
        self.grad_accum_steps(1, key)

    def grad_accum_steps(self, processes: int, key: str) -> int:
        """Micro-batches per optimiser step so that batch x accumulation x processes = effective batch."""
        per_step = self.batch_size * processes
        require(self.effective_batch_size % per_step == 0, f"{key}.effective_batch_size",
                 f"{self.effective_batch_size} is not a multiple of batch_size {self.batch_size} x {processes} process(es)")
        return self.effective_batch_size // per_step


@dataclass(frozen=True)
class ImportanceParams:
    """The importance of each weight for the source task: the diagonal Fisher (EWC), or MAS's (adapt.method: mas)."""

    samples: int
    fisher: Literal["empirical", "sampled"]  # reference labels | labels drawn from the model
    loss: Literal["log_likelihood", "training_loss"]  # the model's log-likelihood | the CTC loss as training divides it
    draws: int
    normalize: Literal["none", "max", "mean"]
    batch_size: int

    def check(self, key: str) -> None:
        require(self.samples >= 1, f"{key}.samples", f"must be >= 1, got {self.samples}")
        require(self.draws >= 1, f"{key}.draws", f"must be >= 1, got {self.draws}")
        require(self.batch_size >= 1, f"{key}.batch_size", f"must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class LoraParams:
    rank: int
    alpha: float
    dropout: float
    target_modules: list[str]

    def check(self, key: str) -> None:
        require(self.rank >= 1, f"{key}.rank", f"must be >= 1, got {self.rank}")
        require(self.alpha > 0, f"{key}.alpha", f"must be > 0, got {self.alpha}")
        require(0 <= self.dropout < 1, f"{key}.dropout", f"must be in [0, 1), got {self.dropout}")
        require(bool(self.target_modules), f"{key}.target_modules", "must name at least one module")


@dataclass(frozen=True, kw_only=True)
class AdaptParams(TrainParams):
    method: Literal["ewc", "mas", "l2", "lwf", "lora"]
    ewc_lambda: float  # the penalty weight of ewc, mas and l2
    ewc_dtype: Literal["float32", "bfloat16"]
    kd_weight: float  # lwf
    kd_temperature: float  # lwf
    lora: LoraParams
    replay_fraction: float  # any method: the share of every batch drawn from source-language training utterances
    replay_samples: int  # the source utterances replay draws from
    keep: Literal["last", "best_target_dev", "best_average_dev"]  # which checkpoint becomes the adapted model

    def check(self, key: str) -> None:
        super().check(key)
        require(self.ewc_lambda >= 0, f"{key}.ewc_lambda", f"must be >= 0, got {self.ewc_lambda}")
        require(self.kd_weight >= 0, f"{key}.kd_weight", f"must be >= 0, got {self.kd_weight}")
        require(self.kd_temperature > 0, f"{key}.kd_temperature", f"must be > 0, got {self.kd_temperature}")
        require(0 <= self.replay_fraction < 1, f"{key}.replay_fraction", f"must be in [0, 1), got {self.replay_fraction}")
        require(self.replay_samples >= 1, f"{key}.replay_samples", f"must be >= 1, got {self.replay_samples}")
        count = self.replay_fraction * self.batch_size  # source utterances in every batch
        require(count == 0 or (math.isclose(count, round(count), abs_tol=1e-9) and 1 <= round(count) < self.batch_size),
                 f"{key}.replay_fraction", f"{self.replay_fraction} x batch_size {self.batch_size} = {count:g}: must be "
                 f"a whole number of utterances from 1 to {self.batch_size - 1}")


@dataclass(frozen=True)
class AverageParams:
    alpha: float  # θ = (1 − α)·θ* + α·θ_adapted; 1 = no averaging

    def check(self, key: str) -> None:
        require(0 <= self.alpha <= 1, f"{key}.alpha", f"must be in [0, 1], got {self.alpha}")


@dataclass(frozen=True)
class EvalParams:
    batch_size: int
    bootstrap_samples: int
    bootstrap: Literal["speaker", "utterance"]  # what the bootstrap resamples
    min_speakers: int  # a test set with fewer speakers gets no interval

    def check(self, key: str) -> None:
        require(self.batch_size >= 1, f"{key}.batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.bootstrap_samples >= 0, f"{key}.bootstrap_samples", f"must be >= 0, got {self.bootstrap_samples}")
        require(self.min_speakers >= 2, f"{key}.min_speakers", f"must be >= 2, got {self.min_speakers}")


@dataclass(frozen=True)
class Params:
    seed: int  # the data seed: the demo corpus, samples and splits, the importance's utterances, replay, bootstrap
    resources: ResourcesParams
    data: DataParams
    demo: DemoParams
    sample: SampleParams
    validate: ValidateParams
    model: ModelParams
    pretrain: TrainParams
    importance: ImportanceParams
    adapt: AdaptParams
    average: AverageParams
    eval: EvalParams

    def check(self, key: str) -> None:
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        for stage in ("pretrain", "adapt"):  # the effective batch must divide over the processes before any work
            getattr(self, stage).grad_accum_steps(self.resources.nproc_per_node, stage)
        require(self.importance.samples >= self.resources.nproc_per_node, "importance.samples",
                 f"{self.importance.samples} utterances cannot be shared by resources.nproc_per_node = "
                 f"{self.resources.nproc_per_node} processes")
