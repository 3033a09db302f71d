# Source: SeanLee97/AnglE, angle_emb/angle.py, get_pooling(pooling_strategy='avg')
#   buggy at 9acf28f^ (divides by torch.sum(attention_mask): the mask summed over the WHOLE batch)
#   fixed at 9acf28fbd50183ee931e261eac06654cd884296b (divides by attention_mask.sum(dim=1).unsqueeze(1))
#   issue https://github.com/SeanLee97/AnglE/issues/101, PR https://github.com/SeanLee97/AnglE/pull/102
# Reduced: the pooling line re-written with the same ops over a tiny BERT backbone (AnglE pools a
# Hugging Face encoder's last hidden state); not a verbatim copy.
import torch
import transformers
from torch import nn

from _inputs import VOCAB, token_batch


def _backbone():
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    return transformers.BertModel(config)


class AnglEAvgBuggy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = _backbone()

    def forward(self, input_ids, attention_mask):
        outputs = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return torch.sum(outputs * attention_mask[:, :, None], dim=1) / torch.sum(attention_mask)


class AnglEAvgFixed(AnglEAvgBuggy):
    def forward(self, input_ids, attention_mask):
        outputs = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return torch.sum(outputs * attention_mask[:, :, None], dim=1) / attention_mask.sum(dim=1).unsqueeze(1)


def inputs(batch_size: int = 4, seq_len: int = 12):
    return token_batch(batch_size, seq_len)
