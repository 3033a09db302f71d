# Source: fastnlp/fastNLP, fastNLP/modules/encoder/star_transformer.py, StarTransformer.forward
#   buggy before PR #139 (nodes.masked_fill_(ex_mask, 0) with ex_mask built from the 1-at-real-tokens mask:
#   the REAL positions are zeroed after every layer and the padded ones kept)
#   fix: flip the mask first (mask == 0), PR https://github.com/FudanNLP/fastNLP/pull/139,
#   issue https://github.com/FudanNLP/fastNLP/issues/138 "masked_fill bug in star-transformer"
# Reduced: the relay/satellite update re-written with the same structure (ring attention over each position's
# neighbours and the relay, star attention of the relay over all nodes, then the masked_fill); only the buggy
# version is in the corpus (the fixed file still initialises the relay with a mean over all positions,
# padding included); not a verbatim copy.
import torch
import torch.nn.functional as F
from torch import nn

from _inputs import set_batch


class StarTransformerBuggy(nn.Module):
    def __init__(self, hidden: int = 16, layers: int = 2):
        super().__init__()
        self.layers = layers
        self.norm = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.ring = nn.ModuleList(nn.MultiheadAttention(hidden, 2, batch_first=True) for _ in range(layers))
        self.star = nn.ModuleList(nn.MultiheadAttention(hidden, 2, batch_first=True) for _ in range(layers))

    def forward(self, x, mask):
        b, length, h = x.shape
        ex_mask = mask.bool().unsqueeze(-1)                      # the bug: True at the real tokens
        smask = torch.cat([torch.zeros(b, 1, dtype=torch.bool), ~mask.bool()], 1)
        nodes, relay = x, x.mean(1, keepdim=True)
        for i in range(self.layers):
            normed = self.norm[i](nodes)
            left = F.pad(normed, (0, 0, 1, 0))[:, :-1]
            right = F.pad(normed, (0, 0, 0, 1))[:, 1:]
            context = torch.stack([left, normed, right, x, relay.expand(b, length, h)], 2).reshape(b * length, 5, h)
            nodes = F.leaky_relu(self.ring[i](normed.reshape(b * length, 1, h), context, context)[0]).view(b, length, h)
            both = torch.cat([relay, nodes], 1)
            relay = F.leaky_relu(self.star[i](relay, both, both, key_padding_mask=smask)[0])
            nodes = nodes.masked_fill(ex_mask, 0)
        return nodes, relay.squeeze(1)


def inputs(batch_size: int = 4, max_items: int = 12):
    batch = set_batch(batch_size, max_items, dim=16, mask_name="mask", true_is_padding=False)
    return batch["x"], batch["mask"].long()
