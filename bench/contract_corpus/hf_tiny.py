# Correct third-party models: Hugging Face transformers' own model classes at tiny configs (random weights),
# called as their documentation says (input_ids + attention_mask, 1 = real token). Source: the installed
# `transformers` package (huggingface/transformers), not modified.
import transformers

from _inputs import VOCAB, token_batch

SMALL = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=64)


def bert():
    return transformers.BertModel(transformers.BertConfig(**SMALL))


def bert_attentions():
    model = transformers.BertModel(transformers.BertConfig(**SMALL, attn_implementation="eager"))
    model.config.output_attentions = True
    return model


def roberta():
    return transformers.RobertaModel(transformers.RobertaConfig(**{**SMALL, "max_position_embeddings": 70}))


def albert():
    return transformers.AlbertModel(transformers.AlbertConfig(**SMALL, embedding_size=16))


def electra():
    return transformers.ElectraModel(transformers.ElectraConfig(**SMALL, embedding_size=16))


def distilbert():
    return transformers.DistilBertModel(transformers.DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=1, n_heads=2, hidden_dim=64, max_position_embeddings=64))


def t5_encoder():
    return transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2))


def gpt2_lm():
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2,
                                                                n_positions=64, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1))


def clip_text():
    return transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=64, bos_token_id=VOCAB - 2, eos_token_id=VOCAB - 1, pad_token_id=0))


def inputs(batch_size: int = 4, seq_len: int = 12):
    return token_batch(batch_size, seq_len)


def clip_inputs(batch_size: int = 4, seq_len: int = 12):
    """CLIP pools the first end-of-text token: the tokenizer puts one at each row's last real position."""
    return token_batch(batch_size, seq_len, eos=VOCAB - 1)
