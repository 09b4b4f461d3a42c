"""Greedy CTC decoding: frame logits to normalised text, in batches that never change a hypothesis.

Vocabulary conventions: `[PAD]` (id 0) is the CTC blank, `|` separates words, and a predicted `[UNK]` (a
character outside the vocabulary) is dropped before the text is normalised, so `st[UNK]s` scores as the one
word `sts`, not as `st unk s`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2ForCTC, Wav2Vec2Processor

from forgetting.data.corpus import Utterance, normalise_text
from forgetting.training.batching import CTCCollator, UtteranceDataset
from forgetting.training.model import BLANK_ID


def eval_batch_size(model: Wav2Vec2ForCTC, batch_size: int) -> int:
    """The batch size at which padding cannot change a hypothesis: `batch_size`, or 1 for a model whose feature
    encoder normalises over time with group norm (wav2vec2-base style, `feat_extract_norm: group`): its statistics
    would include the padding of the shorter clips. Layer norm per frame and the attention mask make the others safe."""
    return 1 if getattr(model.config, "feat_extract_norm", "layer") == "group" else batch_size


def blank_padding_frames(model: Wav2Vec2ForCTC, logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """`logits` (batch, frames, vocab) with every frame past an utterance's end set to predict the blank,
    so greedy decoding reads each utterance as if it had been decoded alone. `attention_mask` is (batch, samples)."""
    frames = model._get_feature_vector_attention_mask(logits.shape[1], attention_mask)  # (batch, frames) bool
    blank = torch.full_like(logits, float("-inf"))
    blank[..., BLANK_ID] = 0.0
    return torch.where(frames[..., None], logits, blank)


def greedy_decode(pred_ids: np.ndarray | torch.Tensor, tokenizer: Wav2Vec2CTCTokenizer) -> list[str]:
    """Greedy CTC decoding of argmax ids (batch, frames): repeats collapse, blanks go, `|` becomes a space.

    -100 (the Trainer's padding between batches) counts as blank; a predicted `[UNK]` is dropped.
    """
    ids = np.asarray(pred_ids)
    return [text.replace(tokenizer.unk_token, "") for text in tokenizer.batch_decode(np.where(ids == -100, BLANK_ID, ids))]


def transcribe(model: Wav2Vec2ForCTC, processor: Wav2Vec2Processor, utterances: Sequence[Utterance], clips_dir: Path,
               batch_size: int, progress: bool = True) -> list[str]:
    """Greedy CTC hypotheses (normalised) in the order of `utterances`. Batches are formed longest first, so
    little is padded, and frames past each utterance's end are blanked, so batching does not change a result (a
    group-norm encoder decodes one utterance at a time: `eval_batch_size`)."""
    order = sorted(range(len(utterances)), key=lambda i: -(utterances[i].duration_s or 0))
    loader = DataLoader(UtteranceDataset([utterances[i] for i in order], clips_dir, processor),
                        batch_size=eval_batch_size(model, batch_size), collate_fn=CTCCollator())
    device = next(model.parameters()).device
    model.eval()
    hypotheses: list[str] = []
    with torch.inference_mode():
        for batch in tqdm(loader, desc="transcribe", unit="batch", disable=not progress):
            mask = batch["attention_mask"].to(device)
            logits = model(batch["input_values"].to(device), attention_mask=mask).logits
            ids = blank_padding_frames(model, logits, mask).argmax(-1).cpu()
            hypotheses.extend(normalise_text(h) for h in greedy_decode(ids, processor.tokenizer))
    in_order = [""] * len(utterances)
    for position, index in enumerate(order):
        in_order[index] = hypotheses[position]
    return in_order
