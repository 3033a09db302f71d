"""Small models and input factories the memory tests (and their CLI runs) load by path. No tests here."""

import torch
from torch import nn


class TinyMLP(nn.Module):
    def __init__(self, width: int = 64, hidden: int = 128, classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x):
        return self.net(x)


class MaskedEncoder(nn.Module):
    """nn.TransformerEncoder with a key-padding mask (the seed's SimilarityTransformer pattern)."""

    def __init__(self, d_model: int = 32, heads: int = 4, layers: int = 2):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model, heads, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers)
        self.head = nn.Linear(d_model, 1)

    def forward(self, x, mask):
        return self.head(self.encoder(x, src_key_padding_mask=mask)).squeeze(-1)


def masked_encoder_inputs(batch_size: int = 4):
    x = torch.randn(batch_size, 12, 32)
    mask = torch.zeros(batch_size, 12, dtype=torch.bool)
    mask[:, 9:] = True
    return (x, mask)


def tiny_gpt2():
    import transformers
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=64,
                                     bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config)


def gpt2_inputs(batch_size: int = 2):
    ids = torch.randint(0, 128, (batch_size, 32)) if torch.get_default_device().type != "meta" else \
        torch.zeros(batch_size, 32, dtype=torch.long)
    return {"input_ids": ids, "labels": ids}


def tiny_bert():
    import transformers
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=100, max_position_embeddings=64)
    return transformers.BertForSequenceClassification(config)


def bert_inputs(batch_size: int = 2):
    ids = torch.zeros(batch_size, 16, dtype=torch.long)
    mask = torch.ones(batch_size, 16, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.zeros(batch_size, dtype=torch.long)}
