"""The CTC model and its processor: a tiny wav2vec2 built from `model.config`, or a checkpoint loaded offline
and fitted to our vocabulary; saving it; the per-run training settings.

Vocabulary conventions (see `forgetting.data.corpus.build_vocab`): `[PAD]` = 0 is also the CTC blank, `|` separates
words. Every model here computes the CTC loss with `ctc_loss_reduction="mean"` (each utterance's loss is
divided by its target length, then averaged over the batch) and `ctc_zero_infinity=True`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import (
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2Processor,
    set_seed,
)

from forgetting.data.audio import TARGET_SR
from forgetting.data.corpus import PAD, UNK, WORD_DELIMITER
from forgetting.errors import REBUILD, InputError
from forgetting.io import replace_dir, temp_dir
from forgetting.layout import weights_file
from forgetting.schema import ModelParams, TrainParams

log = logging.getLogger(__name__)

TINY = "tiny"
BLANK_ID = 0  # [PAD]
CTC_SETTINGS = {"pad_token_id": BLANK_ID, "ctc_loss_reduction": "mean", "ctc_zero_infinity": True}
# what defines a start model: its weights, config, and the vocabulary and special tokens its head is fitted by
_START_FILES = ("*.safetensors", "*.bin", "config.json", "vocab.json", "tokenizer_config.json", "special_tokens_map.json")


class ModelError(InputError):
    """A model that cannot be built or loaded; the message names the checkpoint."""


def build_processor(vocab_path: Path) -> Wav2Vec2Processor:
    """Tokenizer over `vocab_path` (Wav2Vec2CTCTokenizer format) + a 16 kHz, per-utterance normalising feature extractor.

    No `<s>`/`</s>`: CTC has no use for them, and the tokenizer would append them to the vocabulary (and the
    Trainer copy their ids into the model config), so `len(tokenizer)` is exactly the vocabulary size.
    """
    tokenizer = Wav2Vec2CTCTokenizer(str(vocab_path), unk_token=UNK, pad_token=PAD, word_delimiter_token=WORD_DELIMITER,
                                     bos_token=None, eos_token=None)
    if tokenizer.pad_token_id != BLANK_ID:
        raise ModelError(f"{vocab_path}: {PAD} must have id {BLANK_ID} (the CTC blank), has {tokenizer.pad_token_id}")
    features = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=TARGET_SR, padding_value=0.0, do_normalize=True,
                                        return_attention_mask=True)
    return Wav2Vec2Processor(feature_extractor=features, tokenizer=tokenizer)


def build_model(params: ModelParams, vocab: Mapping[str, int], seed: int) -> Wav2Vec2ForCTC:
    """The start model for our vocabulary `vocab` (token -> id). `tiny`: a randomly initialised (seeded)
    Wav2Vec2ForCTC from `params.config`; otherwise `params.name` is a local checkpoint folder or a hub id already in
    the cache, loaded offline: a CTC checkpoint, or a pre-training one (its quantiser and projections are dropped, and
    the CTC head is new). A checkpoint keeps its CTC head whole when it was trained on exactly this vocabulary (its
    `vocab.json` equals `vocab`); otherwise `params.head` decides: "by_token" keeps the rows of the characters both
    vocabularies have (see `fit_head`), "fresh" initialises them all."""
    set_seed(seed)
    if params.name == TINY:
        known = {f.name for f in dataclasses.fields(Wav2Vec2Config)}
        unknown = sorted(set(params.config) - known)
        if unknown:  # Wav2Vec2Config would keep a misspelt key as an unused attribute
            raise ModelError(f"model.config.{unknown[0]}: not a Wav2Vec2Config field")
        try:
            config = Wav2Vec2Config(**{**params.config, "vocab_size": len(vocab), **CTC_SETTINGS})
        except (StrictDataclassError, TypeError, ValueError) as err:
            raise ModelError(f"model.config: not valid Wav2Vec2Config values: {err}") from err
        return Wav2Vec2ForCTC(config)
    model = load_model(params.name)
    theirs = _checkpoint_vocab(params.name)
    reason = _head_mismatch(params.name, model, theirs, vocab)
    if reason:
        old = model.lm_head
        model.lm_head = nn.Linear(old.in_features, len(vocab))
        model._init_weights(model.lm_head)
        kept = fit_head(old, model.lm_head, theirs, _special_tokens(params.name, model, theirs), vocab) \
            if params.head == "by_token" and theirs is not None else 0
        log.warning("%s: CTC head fitted to our vocabulary (model.head: %s): %d of its %d outputs kept from the "
                    "checkpoint's head, %d new; %s", params.name, params.head, kept, len(vocab), len(vocab) - kept, reason)
        model.config.vocab_size = len(vocab)
    model.config.update(CTC_SETTINGS)
    return model


def fit_head(old: nn.Linear, new: nn.Linear, theirs: Mapping[str, int], special: Mapping[str, str],
             vocab: Mapping[str, int]) -> int:
    """Copy into `new` (our vocabulary `vocab`) the rows (weight and bias) of `old` (the checkpoint's vocabulary
    `theirs`) of every token both have; `special` maps our blank, unknown and word delimiter to the checkpoint's names
    for them. The other rows stay as `new` was initialised. Returns how many rows were kept."""
    rows = {ours: theirs[special.get(token, token)] for token, ours in vocab.items()
            if special.get(token, token) in theirs and 0 <= theirs[special.get(token, token)] < old.out_features}
    if rows:
        index_new, index_old = torch.tensor(list(rows)), torch.tensor(list(rows.values()))
        with torch.no_grad():
            new.weight[index_new] = old.weight[index_old]
            new.bias[index_new] = old.bias[index_old]
    return len(rows)


def _special_tokens(name: str, model: Wav2Vec2ForCTC, theirs: Mapping[str, int]) -> dict[str, str]:
    """Our blank, unknown and word-delimiter tokens -> the checkpoint's, from its tokenizer files: its blank is its pad
    token (`<pad>` in most published CTC models), as its config's `pad_token_id` says."""
    folder, names = _checkpoint_folder(name), {}
    for file in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / file
        if path.is_file():
            try:
                tokens = json.loads(path.read_text(encoding="utf-8")).items()
                # a name, or its {"content": name, ...} form (special_tokens_map.json of newer tokenizers)
                names |= {k: v if isinstance(v, str) else v["content"] for k, v in tokens
                          if isinstance(v, str) or (isinstance(v, dict) and isinstance(v.get("content"), str))}
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise ModelError(f"{path}: not a tokenizer JSON ({err})") from err
    blank = next((t for t, i in theirs.items() if i == model.config.pad_token_id), names.get("pad_token", "<pad>"))
    return {PAD: blank, UNK: names.get("unk_token", "<unk>"), WORD_DELIMITER: names.get("word_delimiter_token", "|")}


def _checkpoint_vocab(name: str) -> dict[str, int] | None:
    """The checkpoint's own `vocab.json` (token -> id), or None when it has none (a pre-training checkpoint)."""
    own = _checkpoint_folder(name) / "vocab.json"
    if not own.is_file():
        return None
    try:
        theirs = json.loads(own.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"{own}: not a vocabulary JSON ({err})") from err
    if not isinstance(theirs, dict) or not all(isinstance(i, int) for i in theirs.values()):
        raise ModelError(f"{own}: not a vocabulary JSON (expected token -> id)")
    return theirs


def _head_mismatch(name: str, model: Wav2Vec2ForCTC, theirs: Mapping[str, int] | None,
                   vocab: Mapping[str, int]) -> str | None:
    """Why a checkpoint's CTC head does not fit `vocab`, or None when its own vocab.json is exactly `vocab`."""
    if theirs is None:
        return (f"no vocab.json in {_checkpoint_folder(name)} says which characters its {model.lm_head.out_features} "
                "outputs stand for")
    if model.lm_head.out_features != len(vocab):
        return f"its head has {model.lm_head.out_features} outputs, our vocabulary {len(vocab)}"
    if dict(theirs) != dict(vocab):
        other = sorted(set(theirs) ^ set(vocab)) or [t for t in vocab if theirs.get(t) != vocab[t]]
        return f"its vocab.json has the same size but other tokens or ids ({', '.join(map(repr, other[:5]))})"
    if model.config.pad_token_id != BLANK_ID:  # the same tokens, but another output is its CTC blank
        return f"its blank is output {model.config.pad_token_id}, ours {BLANK_ID}"
    return None


def load_model(name: str | Path) -> Wav2Vec2ForCTC:
    """A Wav2Vec2ForCTC from a checkpoint folder or a cached hub id, offline, without remote code.

    safetensors weights are read when present, after a check that the file is complete (a cut file is refused with
    its name, never a raw SafetensorError); a `.bin`-only checkpoint goes through `torch.load(weights_only=True)`.
    """
    weights = weights_file(Path(name))
    if weights.is_file():
        try:
            with safe_open(str(weights), framework="pt"):
                pass
        except SafetensorError as err:
            raise ModelError(f"{weights}: not a complete safetensors file ({err}); {REBUILD}") from err
    try:
        # float32 whatever the checkpoint was saved in: mixed precision is autocast's, over float32 weights
        model, info = Wav2Vec2ForCTC.from_pretrained(str(name), local_files_only=True, trust_remote_code=False,
                                                     dtype=torch.float32, output_loading_info=True)
    except OSError as err:
        raise ModelError(f"model {name}: not a checkpoint folder nor a hub id in the local cache (offline): {err}") from err
    except pickle.UnpicklingError as err:  # a .bin that holds more than tensors: torch.load(weights_only=True) refuses it
        raise ModelError(f"model {name}: its weights file holds objects other than tensors, which are never "
                         f"unpickled here: {err}") from err
    dropped = info.get("unexpected_keys") or []
    if dropped:  # a pre-training checkpoint: its quantiser and projections have no use in a CTC model
        parts = sorted({key.split(".")[0] for key in dropped})
        log.info("model %s: %d weights that a CTC model has no use for were dropped (%s)", name, len(dropped), ", ".join(parts))
    return model


def load_trained(model_dir: Path) -> tuple[Wav2Vec2ForCTC, Wav2Vec2Processor]:
    """A model and its processor as `save_model` wrote them, in eval mode; a head that does not match the folder's
    vocabulary is refused."""
    model = load_model(model_dir)
    processor = Wav2Vec2Processor.from_pretrained(str(model_dir), local_files_only=True)
    if model.lm_head.out_features != len(processor.tokenizer):
        raise ModelError(f"{Path(model_dir) / 'vocab.json'}: {len(processor.tokenizer)} tokens, but the model's CTC head "
                         f"has {model.lm_head.out_features} outputs; {REBUILD}")
    return model.eval(), processor


def checkpoint_files(name: str) -> list[Path]:
    """The files that define a start model (weights, config) for the run key; none for `tiny` (its params do)."""
    if name == TINY:
        return []
    folder = _checkpoint_folder(name)
    return sorted(p for pattern in _START_FILES for p in folder.glob(pattern))


def _checkpoint_folder(name: str) -> Path:
    """The local folder of a checkpoint: `name` itself, or its snapshot in the hub cache (offline)."""
    folder = Path(name)
    return folder if folder.is_dir() else Path(snapshot_download(name, local_files_only=True))


def save_model(model: Wav2Vec2ForCTC, processor: Wav2Vec2Processor, out_dir: Path) -> None:
    """Write model (model.safetensors + config.json) and processor files to `out_dir`, replacing it whole.

    Written to `<out_dir>.tmp` first and renamed, so an interrupted save never leaves a half model behind.
    transformers 5 always saves safetensors (there is no `safe_serialization` switch any more).
    """
    tmp = temp_dir(out_dir)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    if not weights_file(tmp).is_file():
        raise ModelError(f"{tmp}: save_pretrained wrote no {weights_file(tmp).name} ({sorted(p.name for p in tmp.iterdir())})")
    replace_dir(tmp, out_dir)


def apply_training_config(model: Wav2Vec2ForCTC, params: TrainParams) -> None:
    """Set dropout, layerdrop and SpecAugment's time and feature masking for a run, in the config and in the built
    modules (a checkpoint's own values never stay on unasked).

    `params.dropout` applies to every dropout of the model (hidden, activation, attention, feature
    projection, final). The modules of a loaded checkpoint were built with its old values, so each
    `nn.Dropout` and each attention module's float `dropout` is set here too; layerdrop and masking are read
    from the config at every forward pass; the mask embedding exists only while masking is on. The feature
    encoder is frozen when `params.freeze_feature_encoder`.
    """
    dropout_keys = ("hidden_dropout", "activation_dropout", "attention_dropout", "feat_proj_dropout", "final_dropout")
    model.config.update({key: params.dropout for key in dropout_keys})
    model.config.update({"layerdrop": params.layerdrop, "mask_time_prob": params.mask_time_prob,
                         "mask_feature_prob": params.mask_feature_prob})
    for name, module in model.named_modules():
        if ".lora_dropout." in f".{name}.":  # LoRA's own dropout is adapt.lora.dropout, set by peft
            continue
        if isinstance(module, nn.Dropout):
            module.p = params.dropout
        elif isinstance(getattr(module, "dropout", None), float):  # attention: functional dropout with this p
            module.dropout = params.dropout
    # Wav2Vec2Model has a mask embedding only when its config masks: match that, so that the saved model
    # loads back without a missing or unexpected key
    base, masking = model.wav2vec2, params.mask_time_prob > 0 or params.mask_feature_prob > 0
    if masking and not hasattr(base, "masked_spec_embed"):
        base.masked_spec_embed = nn.Parameter(torch.empty(model.config.hidden_size).uniform_())  # as __init__ does
    elif not masking and hasattr(base, "masked_spec_embed"):
        del base.masked_spec_embed
    if params.freeze_feature_encoder:
        model.freeze_feature_encoder()
