"""Clean control: Hugging Face BERT for masked LM from a tiny config (2 layers, 64 hidden), loss
from `labels` passed as a keyword input. BertForMaskedLM builds BertModel without a pooler, so
every parameter is on the loss path. grads.py must raise no RISK or CAUTION on it.

`ModelWithPooler` is BertForPreTraining trained on its masked-LM logits only (`--loss
tests/defects/clean_bert.py:mlm_only_loss`): its pooler and next-sentence head run but the loss
ignores them; grads.py reports them as `output_unused` (INFO), not as a bug."""

import torch
import transformers

VOCAB = 100


def _config():
    return transformers.BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=2,
                                   intermediate_size=128, vocab_size=VOCAB, max_position_embeddings=64)


def Model():
    return transformers.BertForMaskedLM(_config())


def ModelWithPooler():
    return transformers.BertForPreTraining(_config())


def example_inputs(batch_size: int = 2):
    ids = torch.randint(0, VOCAB, (batch_size, 16))
    return {"input_ids": ids, "labels": ids}


def mlm_only_loss(output):
    """Cross-entropy of BertForPreTraining's MLM logits against token 0 (a fixed target); the
    next-sentence logits are left out, as when pre-training without the NSP task."""
    logits = output.prediction_logits                                   # (B, T, VOCAB)
    target = torch.zeros(logits.shape[:-1], dtype=torch.long, device=logits.device)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())
