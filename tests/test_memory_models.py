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


def tiny_gpt2_checkpointed():
    """tiny_gpt2 with the model's own gradient checkpointing switched on by the user, before the tool sees it."""
    import warnings
    model = tiny_gpt2()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.gradient_checkpointing_enable()
    return model


class CkptAttn(nn.Module):
    """The user's own torch.utils.checkpoint around a block with scaled_dot_product_attention (x: (B, T, 64))."""

    def __init__(self, checkpointing: bool = True):
        super().__init__()
        self.checkpointing = checkpointing
        self.qkv = nn.Linear(64, 192)
        self.out = nn.Linear(64, 64)

    def block(self, x):
        q, k, v = self.qkv(x).view(x.shape[0], x.shape[1], 3, 4, 16).permute(2, 0, 3, 1, 4)  # 3 x (B, 4, T, 16)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(x.shape))

    def forward(self, x):
        if not self.checkpointing:
            return self.block(x)
        from torch.utils.checkpoint import checkpoint
        return checkpoint(self.block, x, use_reentrant=False)


class CkptMLP(nn.Module):
    """The user's own torch.utils.checkpoint around an MLP (x: (B, T, 64)); USE_REENTRANT picks checkpoint's path."""

    def __init__(self, checkpointing: bool = True, use_reentrant: bool = False):
        super().__init__()
        self.checkpointing, self.use_reentrant = checkpointing, use_reentrant
        self.f = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))
        # reentrant checkpoint needs an input that requires grad, so a layer comes first
        self.pre = nn.Linear(64, 64) if use_reentrant else nn.Identity()

    def forward(self, x):
        x = self.pre(x)
        if not self.checkpointing:
            return self.f(x)
        from torch.utils.checkpoint import checkpoint
        return checkpoint(self.f, x, use_reentrant=self.use_reentrant)
