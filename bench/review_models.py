"""The models bench/review_time.py reviews besides the bundled examples: the kinds users bring (issue 22).

A tiny Hugging Face BERT classifier (built from a config, no download), a U-Net for segmentation, and a GRU
seq2seq whose encoder packs its padded source with pack_padded_sequence. Each has an inputs factory (integer
keywords are resizable dims; `batch_size` is the batch) and returns its own loss (`output.loss` / `["loss"]`),
so `report.py` needs no --loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


# ---- tiny BERT (the size of google/bert_uncased_L-2_H-128_A-2, "bert-tiny") ---------------------------------------
def bert_tiny():
    import transformers

    config = transformers.BertConfig(vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=512, max_position_embeddings=512, num_labels=2)
    return transformers.BertForSequenceClassification(config)


def bert_inputs(batch_size: int = 32, seq_len: int = 128):
    """Token ids, an attention mask with padded tails, and labels (so the model returns .loss)."""
    input_ids = torch.randint(1000, 30522, (batch_size, seq_len))
    lengths = torch.linspace(seq_len // 4, seq_len, batch_size).round().long()
    attention_mask = (torch.arange(seq_len).unsqueeze(0) < lengths.unsqueeze(1)).long()
    labels = torch.arange(batch_size) % 2
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


# ---- U-Net -----------------------------------------------------------------------------------------------------------
class DoubleConv(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=True), nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """Ronneberger et al.'s U-Net, 4 levels, BASE channels at the top; returns per-pixel class logits."""

    def __init__(self, in_channels: int = 3, classes: int = 2, base: int = 32):
        super().__init__()
        widths = [base, base * 2, base * 4, base * 8]
        self.down = nn.ModuleList()
        channels = in_channels
        for width in widths:
            self.down.append(DoubleConv(channels, width))
            channels = width
        self.bottom = DoubleConv(widths[-1], widths[-1] * 2)
        self.up = nn.ModuleList(nn.ConvTranspose2d(w * 2, w, 2, stride=2) for w in reversed(widths))
        self.merge = nn.ModuleList(DoubleConv(w * 2, w) for w in reversed(widths))
        self.head = nn.Conv2d(base, classes, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        skips = []
        x = image
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips)):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def unet_inputs(batch_size: int = 8, size: int = 128):
    return torch.randn(batch_size, 3, size, size)


def unet_loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a fixed striped mask (the labels depend only on the pixel's position)."""
    height, width = logits.shape[-2:]
    rows = torch.arange(height, device=logits.device).unsqueeze(1)
    cols = torch.arange(width, device=logits.device).unsqueeze(0)
    target = ((rows // 8 + cols // 8) % logits.shape[1]).expand(logits.shape[0], height, width)
    return F.cross_entropy(logits, target)


# ---- GRU seq2seq with packed sequences ----------------------------------------------------------------------------
class GRUSeq2Seq(nn.Module):
    """Encoder GRU over the packed, padded source (its lengths), decoder GRU teacher-forced on the target."""

    def __init__(self, vocab: int = 8000, embed: int = 256, hidden: int = 512, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed, padding_idx=0)
        self.encoder = nn.GRU(embed, hidden, layers, batch_first=True)
        self.decoder = nn.GRU(embed, hidden, layers, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt: torch.Tensor) -> dict[str, torch.Tensor]:
        packed = pack_padded_sequence(self.embed(src), src_lengths.cpu(), batch_first=True, enforce_sorted=False)
        encoded, state = self.encoder(packed)
        pad_packed_sequence(encoded, batch_first=True, total_length=src.shape[1])
        decoded, _ = self.decoder(self.embed(tgt[:, :-1]), state)
        logits = self.out(decoded)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt[:, 1:].reshape(-1), ignore_index=0)
        return {"loss": loss, "logits": logits}


def seq2seq_inputs(batch_size: int = 32, src_len: int = 40, tgt_len: int = 40):
    """Sources padded with 0 after their lengths (between src_len/4 and src_len), targets without padding."""
    src_lengths = torch.linspace(max(1, src_len // 4), src_len, batch_size).round().long()
    src = torch.randint(1, 8000, (batch_size, src_len))
    src = src.masked_fill(torch.arange(src_len).unsqueeze(0) >= src_lengths.unsqueeze(1), 0)
    tgt = torch.randint(1, 8000, (batch_size, tgt_len))
    return src, src_lengths, tgt
