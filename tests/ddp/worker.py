"""What each process started by `torchrun` does for tests/unit/training/test_distributed.py; the test runs the same functions
in its own process for the one-process reference.

    torchrun --standalone --nproc_per_node=2 -m tests.ddp.worker PLAN.json

PLAN.json: `{"corpus": {CorpusFiles fields}, "model": folder, "adapt": [{AdaptRun fields}], "importance": [folder]}`.
Each adapt run trains the tiny model with `forgetting.training.trainer.train_ctc` and the EWC penalty under its `root`; each
importance folder holds a params.yaml, and the importance stage (`stages.importance.main`) runs there on the model
folder. Besides the outputs, every process writes files of its own for the test: `rank<r>.safetensors` (its final
weights), `rank<r>-steps.safetensors` (its weights before the first optimiser step and the gradients of every step),
`rank<r>-batches.json` (the audio lengths of its micro-batches, in order) and `rank<r>-writes.json` (what it wrote
under the run's folder while train_ctc or the stage ran).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import TrainerCallback, Wav2Vec2ForCTC, Wav2Vec2Processor

from forgetting.data.corpus import read_split_tsv
from forgetting.methods.penalty import EWCPenalty
from forgetting.params import load_params
from forgetting.schema import TrainParams
from forgetting.training import distributed
from forgetting.training.batching import Split
from forgetting.training.model import apply_training_config, build_model, build_processor
from forgetting.training.trainer import train_ctc
from stages import importance

ROOT = Path(__file__).resolve().parents[2]
PARAMS = load_params(ROOT / "params.yaml")
# XLS-R's layer-norm feature encoder: with it, padding changes no utterance's result, so N processes can take one
# process's step. The demo's group norm (wav2vec2-base's) normalises over the padded clip, and the padding depends on
# how the batch is split (docs/pipeline.md#the-demo-model).
MODEL = dataclasses.replace(PARAMS.model, config={**PARAMS.model.config, "feat_extract_norm": "layer"})
# the audit events of writing, renaming, creating and removing files and folders
WRITE_EVENTS = ("open", "os.rename", "os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


@dataclass(frozen=True)
class CorpusFiles:
    """The micro corpus as files: its clips folder, vocabulary JSON, and the train and dev split TSVs (with
    duration_s)."""

    clips: str
    vocab: str
    train: str
    dev: str


@dataclass(frozen=True)
class AdaptRun:
    """An adapt run of the tiny model on the corpus' train split (dev: its dev split), written under `root`:
    `batch_size` utterances per process and forward pass, `effective_batch_size` per optimiser step (all processes and
    micro-batches), `max_steps` optimiser steps of AdamW at `lr` (no warm-up), `layerdrop`; no dropout, no time
    masking, so the run is deterministic. The EWC penalty has weight `lam`, a seeded importance uniform in [0.5, 1)
    and θ* the initial weights; training starts from θ* + δ, δ seeded normal with standard deviation `offset`, so that
    the penalty's gradient is not 0 in the first step already."""

    root: str
    batch_size: int
    effective_batch_size: int
    lam: float
    offset: float = 0.0
    max_steps: int = 1
    layerdrop: float = 0.0
    lr: float = 1e-3

    def train_params(self) -> TrainParams:
        """The adapt params of params.yaml with this run's settings."""
        return dataclasses.replace(PARAMS.adapt, lr=self.lr, warmup_ratio=0.0, epochs=None, max_steps=self.max_steps,
                                   batch_size=self.batch_size, effective_batch_size=self.effective_batch_size,
                                   eval_steps=self.max_steps, dropout=0.0, layerdrop=self.layerdrop, mask_time_prob=0.0,
                                   dataloader_workers=0)


def initial_model(corpus: CorpusFiles, run: AdaptRun) -> tuple[Wav2Vec2ForCTC, Wav2Vec2Processor]:
    """The tiny model of params.yaml with a layer-norm encoder (seed 0) that every run anchors at (θ*), its trainable
    set as the run's params make it, and its processor."""
    processor = build_processor(Path(corpus.vocab))
    model = build_model(MODEL, processor.tokenizer.get_vocab(), seed=0)
    apply_training_config(model, run.train_params())
    return model, processor


class StepRecorder(TrainerCallback):
    """The weights before the first optimiser step (`"0/<parameter name>"`), and the gradients that every step `s`
    applies (`"<s>/<parameter name>"`: reduced over the processes, the penalty's added, clipped), on the CPU."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        for name, p in model.named_parameters():
            if p.requires_grad:
                if state.global_step == 0:
                    self.tensors[f"0/{name}"] = p.detach().cpu().clone()
                grad = p.grad if p.grad is not None else torch.zeros_like(p)  # None: no gradient reached it
                self.tensors[f"{state.global_step + 1}/{name}"] = grad.detach().cpu().clone()


class BatchRecordingPenalty(EWCPenalty):
    """The EWC penalty, recording the audio lengths (samples) of every training micro-batch the core shows it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[list[int]] = []

    def loss(self, model, inputs, logits):
        self.batches.append(inputs["attention_mask"].sum(-1).tolist())
        return None


def adapt(corpus: CorpusFiles, run: AdaptRun, record_writes: bool = False) -> None:
    """Train as `run` says; the model, curves and metrics go to `<root>/model` and `<root>/reports` (process 0), and
    each process writes its final weights, its StepRecorder's tensors, its micro-batches' audio lengths and, with
    `record_writes`, what it wrote while training beside them."""
    model, processor = initial_model(corpus, run)
    generator = torch.Generator().manual_seed(1)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    penalty = BatchRecordingPenalty(model, {n: 0.5 + 0.5 * torch.rand(p.shape, generator=generator)
                                            for n, p in trainable.items()}, run.lam)
    with torch.no_grad():
        for p in trainable.values():
            p.add_(run.offset * torch.randn(p.shape, generator=generator))
    recorder, root, clips = StepRecorder(), Path(run.root), Path(corpus.clips)
    root.mkdir(parents=True, exist_ok=True)
    with recorded_writes(root) if record_writes else nullcontext():
        train_ctc(model, processor, Split(read_split_tsv(Path(corpus.train)), clips),
                  {"de": Split(read_split_tsv(Path(corpus.dev)), clips)}, run.train_params(), "adapt", root / "model",
                  root / "reports", root / "checkpoints", "k" * 64, keep="last", regularisers=[penalty],
                  extra_callbacks=[recorder])
    rank = distributed.rank()
    save_file({n: t.detach().contiguous() for n, t in model.state_dict().items()}, root / f"rank{rank}.safetensors")
    save_file(recorder.tensors, root / f"rank{rank}-steps.safetensors")
    (root / f"rank{rank}-batches.json").write_text(json.dumps(penalty.batches), encoding="utf-8")


def run_importance_stage(folder: Path, corpus: CorpusFiles, model_dir: Path) -> None:
    """The importance stage as `dvc repro` runs it, from `folder` (its params.yaml), on the corpus' train split (as
    language nl) and `model_dir`; outputs under `<folder>/out`."""
    out = folder / "out"
    argv, cwd = sys.argv, Path.cwd()
    sys.argv = ["importance", "--model", str(model_dir), "--train", corpus.train, "--lang", "nl", "--out", str(out),
                "--summary", str(out / "summary.json"), "--layers", str(out / "layers.json"),
                "--figure", str(out / "layers.png"), "--provenance", str(out / "provenance.json")]
    os.chdir(folder)
    try:
        importance.main()
    finally:
        sys.argv = argv
        os.chdir(cwd)


@contextmanager
def recorded_writes(root: Path) -> Iterator[None]:
    """Record the paths under `root` that this process opens for writing, renames, creates or removes, and write them
    to `<root>/rank<r>-writes.json` at the end: `[[event, path, ...], ...]`. A Python audit hook: a file that native
    code writes (safetensors, torch.save) shows through the folder it is written in and the renames."""
    events: list[list[str]] = []
    prefix = str(root.resolve()) + os.sep
    recording = True

    def hook(event: str, args: tuple) -> None:
        if not recording or event not in WRITE_EVENTS:
            return
        if event == "open":  # (path, mode, flags): a mode string from open(), None and the flags from os.open()
            mode, flags = args[1], args[2]
            if not (set(mode) & set("wax+") if mode is not None else flags & WRITE_FLAGS):
                return
        named = args[:2] if event == "os.rename" else args[:1]  # (src, dst) of a rename, else the one path
        paths = [os.path.abspath(os.fsdecode(a)) for a in named if isinstance(a, str | bytes | os.PathLike)]
        if any(p.startswith(prefix) for p in paths):
            events.append([event, *paths])

    sys.addaudithook(hook)  # an audit hook cannot be removed: it stops recording when the block ends
    try:
        yield
    finally:
        recording = False
        (root / f"rank{distributed.rank()}-writes.json").write_text(json.dumps(events, indent=1), encoding="utf-8")


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    corpus = CorpusFiles(**plan["corpus"])
    distributed.init()
    for fields in plan["adapt"]:
        adapt(corpus, AdaptRun(**fields), record_writes=True)
    for folder in map(Path, plan["importance"]):
        with recorded_writes(folder):
            run_importance_stage(folder, corpus, Path(plan["model"]))


if __name__ == "__main__":
    main()
