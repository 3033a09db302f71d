# Source: vgel/repeng, repeng/extract.py, batched_get_hiddens
#   buggy at 9c1c4c2^ (hidden state of position -1 of every row: a padding token for right-padded rows)
#   fixed at 9c1c4c249220ad7ba72483b6698452057cb12784 (the last index where attention_mask is 1)
#   PR https://github.com/vgel/repeng/pull/38 "Fix batched training on right-padded models"
# Reduced: the per-row selection re-written as a module over a tiny GPT-2 (repeng reads a causal LM's hidden
# states); not a verbatim copy.
import torch
import transformers
from torch import nn

from _inputs import VOCAB, token_batch


class LastPositionBuggy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lm = transformers.GPT2Model(transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2,
                                                                 n_positions=64, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1))

    def forward(self, input_ids, attention_mask):
        hidden = self.lm(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden[:, -1, :]


class LastPositionFixed(LastPositionBuggy):
    def forward(self, input_ids, attention_mask):
        hidden = self.lm(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        rows = []
        for i in range(hidden.shape[0]):
            last_real = attention_mask[i].nonzero(as_tuple=True)[0][-1]
            rows.append(hidden[i, last_real])
        return torch.stack(rows)


def inputs(batch_size: int = 4, seq_len: int = 12):
    return token_batch(batch_size, seq_len)
