# Source: jsboige/CoursIA, notebook 03-Embeddings-From-Scratch, cell "Pont vers la production" ([EMB:c19])
#   buggy: embedding = o.last_hidden_state.mean(dim=1) (the padded rows of the batch are averaged in)
#   fixed: (last_hidden_state * attention_mask[..., None]).sum(1) / attention_mask.sum(1)
#   issue https://github.com/jsboige/CoursIA/issues/15045, PR https://github.com/jsboige/CoursIA/pull/15074
# Reduced: the notebook pools a sentence-transformers MiniLM (a BERT); here a tiny BERT with the same two
# poolings; not a verbatim copy.
import transformers
from torch import nn

from _inputs import VOCAB, token_batch


class MeanPoolBuggy(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = transformers.BertModel(transformers.BertConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64))

    def forward(self, input_ids, attention_mask):
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.mean(dim=1)


class MeanPoolFixed(MeanPoolBuggy):
    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        keep = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * keep).sum(dim=1) / keep.sum(dim=1)


def inputs(batch_size: int = 4, seq_len: int = 12):
    return token_batch(batch_size, seq_len)
