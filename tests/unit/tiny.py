"""A real tiny Wav2Vec2ForCTC built from a config, seeded noise utterances, Dutch and German sentences with their
vocabulary, and the Fisher comparison that the model, decoding, Fisher, penalty and gradient tests share."""

import json
import math
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from forgetting.data.corpus import build_vocab

VOCAB = 45
TINY = dict(hidden_size=128, num_hidden_layers=3, num_attention_heads=4, intermediate_size=256, conv_dim=[64] * 7,
            conv_stride=[5, 2, 2, 2, 2, 2, 2], conv_kernel=[10, 3, 3, 3, 3, 2, 2], feat_extract_norm="layer",
            do_stable_layer_norm=True, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, vocab_size=VOCAB,
            pad_token_id=0, ctc_loss_reduction="mean", ctc_zero_infinity=True)


def tiny_model(**overrides) -> Wav2Vec2ForCTC:
    torch.manual_seed(0)
    return Wav2Vec2ForCTC(Wav2Vec2Config(**{**TINY, **overrides}))


def utterances(lengths_s: list[float], seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """Seeded noise plus a sine per utterance, normalised; random label sequences of 3-10 ids (no blank)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for seconds in lengths_s:
        n = int(seconds * 16000)
        t = torch.arange(n) / 16000
        x = 0.3 * torch.randn(n, generator=g) + torch.sin(2 * math.pi * (150 + 300 * torch.rand(1, generator=g)) * t)
        labels = torch.randint(1, VOCAB, (int(torch.randint(3, 11, (1,), generator=g)),), generator=g)
        out.append({"input_values": (x - x.mean()) / x.std(), "labels": labels})
    return out


def collate(utts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """What the training loader yields: audio zero-padded with an attention mask, labels padded with -100."""
    audio = [u["input_values"] for u in utts]
    return {"input_values": pad_sequence(audio, batch_first=True),
            "attention_mask": pad_sequence([torch.ones(len(a), dtype=torch.long) for a in audio], batch_first=True),
            "labels": pad_sequence([u["labels"] for u in utts], batch_first=True, padding_value=-100)}


def assert_same_fisher(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rel: float = 1e-5) -> None:
    """Max |a-b| / max |b| over all entries, and per tensor ‖a-b‖/‖b‖, within `rel`. A tensor whose exact Fisher is
    zero (key-projection biases: softmax is shift invariant) holds only rounding noise; it is held to the global bound."""
    assert a.keys() == b.keys()
    top = max(float(t.abs().max()) for t in b.values())
    assert max(float((a[n] - b[n]).abs().max()) for n in b) <= rel * top
    for name in b:
        if float(b[name].norm()) > 1e-9 * top:
            assert float((a[name] - b[name]).norm() / b[name].norm()) <= rel, name


SENTENCES = {
    "nl": ["Het ijs is één keer gebroken, zo'n ding!", "Zoë's ruïne: geëerd en gerëorganiseerd?"],
    "de": ["Die Straße ist groß; Mädchen ärgern sich über Öl.", "Geht's dir gut? Äußerst süß!"],
}


def write_vocab(path: Path, texts) -> Path:
    path.write_text(json.dumps(build_vocab(texts), ensure_ascii=False), encoding="utf-8")
    return path


def audio_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two utterances (1.0 s and 0.6 s at 16 kHz), the second zero-padded; and their attention mask."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(2, 16_000, generator=generator)
    mask = torch.ones(2, 16_000, dtype=torch.long)
    values[1, 9_600:], mask[1, 9_600:] = 0.0, 0
    return values, mask
