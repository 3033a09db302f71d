"""The contract corpus: one entry per model, with where it comes from and what is known about it.

kind: "bug" (a documented contract defect, at the buggy version), "fixed" (the same model at its fix),
"correct" (a third-party model known to honour its contract). `risk` lists the findings a bug must produce
(check, and the input or dim it concerns); a fixed or correct model must produce no RISK at all, and where
`convention` is given, the mask it honours. Read by tests/test_contract_corpus.py and bench/contract_corpus.py.
"""

from __future__ import annotations

HERE = "bench/contract_corpus"


def case(id, kind, file, target, factory="inputs", source="", risk=(), convention=None, extra=(), fast=False):
    return {"id": id, "kind": kind, "target": f"{HERE}/{file}:{target}", "inputs": f"{HERE}/{file}:{factory}",
            "source": source, "risk": [dict(zip(("check", "where"), r)) for r in risk], "convention": convention,
            "extra": list(extra), "fast": fast}


ANGLE = "SeanLee97/AnglE angle_emb/angle.py 9acf28f (PR #102, issue #101)"
REPENG = "vgel/repeng repeng/extract.py 9c1c4c2 (PR #38)"
TTC = "InseeFrLab/torchTextClassifiers text_embedder.py 9a8b215 (PR #92)"
DIENGINE = "opendilab/DI-engine ding/torch_utils/network/transformer.py 3bf01a9 -> dc06489 (issue #333)"
ALLENNLP = "allenai/allennlp seq2vec_encoders/cnn_encoder.py 00bb6c5 -> 09c2322 (issue #4739)"
FASTNLP = "fastnlp/fastNLP modules/encoder/star_transformer.py (issue #138, PR #139)"
COURSIA = "jsboige/CoursIA 03-Embeddings-From-Scratch (issue #15045, PR #15074)"
ST = "huggingface/sentence-transformers models/Pooling.py lasttoken (PR #2111)"
UNIEM = "wangyuxinwhy/uniem uniem/model.py ba0a8e4 (PR #23)"
TABFORMER = "IBM/TabFormer models/hierarchical.py 600d4e9 (PR #14)"
OMDET = "om-ai-lab/OmDet omdet_v2_turbo/ela_encoder.py 542ce97 (issue #19)"
GDINO = "longzw1997/Open-GroundingDino TransformerEncoderLayer (issue #115, open)"
ISSUE18 = "model-expert issue 18 (the issue's own DeepSets cases)"
HF = "huggingface/transformers (installed package), tiny config"
TORCH = "pytorch/pytorch nn layers (installed package)"

CASES = [
    # documented bugs, and their fixes
    case("angle_avg_global_sum", "bug", "angle_avg_pooling.py", "AnglEAvgBuggy", source=ANGLE, risk=[("batch", None)]),
    case("angle_avg_fixed", "fixed", "angle_avg_pooling.py", "AnglEAvgFixed", source=ANGLE,
         convention="false_is_padding"),
    case("repeng_last_position", "bug", "repeng_last_token.py", "LastPositionBuggy", source=REPENG,
         risk=[("mask", "attention_mask")]),
    case("repeng_last_real_token", "fixed", "repeng_last_token.py", "LastPositionFixed", source=REPENG,
         convention="false_is_padding"),
    case("ttc_label_attention_inverted", "bug", "ttc_label_attention.py", "LabelAttentionBuggy", source=TTC,
         risk=[("mask", "attention_mask")], fast=True),
    case("ttc_label_attention_fixed", "fixed", "ttc_label_attention.py", "LabelAttentionFixed", source=TTC,
         convention="false_is_padding", fast=True),
    case("diengine_masked_fill_no_op", "bug", "diengine_transformer.py", "DITransformerBuggy", source=DIENGINE,
         risk=[("mask", "mask")], fast=True),
    case("diengine_masked_fill_fixed", "fixed", "diengine_transformer.py", "DITransformerFixed", source=DIENGINE,
         convention="false_is_padding", fast=True),
    case("allennlp_cnn_max_over_padding", "bug", "allennlp_cnn_encoder.py", "CnnEncoderBuggy", source=ALLENNLP,
         risk=[("mask", "mask")], fast=True),
    case("allennlp_cnn_fixed", "fixed", "allennlp_cnn_encoder.py", "CnnEncoderFixed", source=ALLENNLP,
         convention="false_is_padding", fast=True),
    case("fastnlp_star_masked_fill", "bug", "fastnlp_star_transformer.py", "StarTransformerBuggy", source=FASTNLP,
         risk=[("mask", "mask")]),
    case("coursia_mean_over_padding", "bug", "coursia_mean_pooling.py", "MeanPoolBuggy", source=COURSIA,
         risk=[("mask", "attention_mask")]),
    case("coursia_masked_mean", "fixed", "coursia_mean_pooling.py", "MeanPoolFixed", source=COURSIA,
         convention="false_is_padding"),
    case("st_lasttoken_unpadded_row", "bug", "st_lasttoken_pooling.py", "LastTokenBuggy", source=ST,
         risk=[("mask", "attention_mask")], fast=True),
    case("st_lasttoken_fixed", "fixed", "st_lasttoken_pooling.py", "LastTokenFixed", source=ST,
         convention="false_is_padding", fast=True),
    case("groundingdino_mask_repeat", "bug", "groundingdino_mask_repeat.py", "EncoderLayerRepeatBuggy",
         source=GDINO, risk=[("batch", None)], fast=True),
    case("groundingdino_repeat_interleave", "fixed", "groundingdino_mask_repeat.py", "EncoderLayerRepeatFixed",
         source=GDINO, fast=True),
    case("uniem_last_mean_no_mask", "bug", "uniem_embedders.py", "LastMeanBuggy", factory="buggy_inputs",
         source=UNIEM, risk=[("mask", "mask")]),
    case("uniem_last_mean_fixed", "fixed", "uniem_embedders.py", "LastMeanFixed", source=UNIEM,
         convention="false_is_padding"),
    case("uniem_first_last_no_mask", "bug", "uniem_embedders.py", "FirstLastBuggy", factory="buggy_inputs",
         source=UNIEM, risk=[("mask", "mask")]),
    case("uniem_first_last_fixed", "fixed", "uniem_embedders.py", "FirstLastFixed", source=UNIEM,
         convention="false_is_padding"),
    case("uniem_last_weighted_no_mask", "bug", "uniem_embedders.py", "LastWeightedBuggy", factory="buggy_inputs",
         source=UNIEM, risk=[("mask", "mask")]),
    case("uniem_last_weighted_fixed", "fixed", "uniem_embedders.py", "LastWeightedFixed", source=UNIEM,
         convention="false_is_padding"),
    case("tabformer_attention_across_batch", "bug", "batch_first_mixups.py", "TabFormerEmbeddingsBuggy",
         factory="tabformer_inputs", source=TABFORMER, risk=[("batch", None)], fast=True),
    case("tabformer_permuted", "fixed", "batch_first_mixups.py", "TabFormerEmbeddingsFixed",
         factory="tabformer_inputs", source=TABFORMER, fast=True),
    case("omdet_attention_across_batch", "bug", "batch_first_mixups.py", "ELATransformerLayerBuggy",
         factory="ela_inputs", source=OMDET, risk=[("batch", None)], fast=True),
    case("omdet_batch_first", "fixed", "batch_first_mixups.py", "ELATransformerLayerFixed", factory="ela_inputs",
         source=OMDET, fast=True),
    # the issue's own cases
    case("deepsets_count_padding", "bug", "issue18_deepsets.py", "CountPaddingPool", source=ISSUE18,
         risk=[("mask", "padding_mask")], fast=True),
    case("deepsets_inverted", "bug", "issue18_deepsets.py", "InvertedMask", source=ISSUE18,
         risk=[("mask", "padding_mask")], fast=True),
    case("deepsets_correct", "correct", "issue18_deepsets.py", "CorrectScorer", source=ISSUE18,
         convention="true_is_padding", fast=True),
    # correct third-party models
    case("hf_bert", "correct", "hf_tiny.py", "bert", source=HF, convention="false_is_padding"),
    case("hf_bert_output_attentions", "correct", "hf_tiny.py", "bert_attentions", source=HF,
         convention="false_is_padding"),
    case("hf_roberta", "correct", "hf_tiny.py", "roberta", source=HF, convention="false_is_padding"),
    case("hf_albert", "correct", "hf_tiny.py", "albert", source=HF, convention="false_is_padding"),
    case("hf_electra", "correct", "hf_tiny.py", "electra", source=HF, convention="false_is_padding"),
    case("hf_distilbert", "correct", "hf_tiny.py", "distilbert", source=HF, convention="false_is_padding"),
    case("hf_t5_encoder", "correct", "hf_tiny.py", "t5_encoder", source=HF, convention="false_is_padding"),
    case("hf_gpt2_lm", "correct", "hf_tiny.py", "gpt2_lm", source=HF, convention="false_is_padding"),
    case("hf_clip_text", "correct", "hf_tiny.py", "clip_text", factory="clip_inputs", source=HF,
         convention="false_is_padding"),
    case("torch_transformer_encoder_pool", "correct", "torch_layers.py", "EncoderPool", source=TORCH,
         convention="true_is_padding", fast=True),
    case("torch_transformer_encoder_tokens", "correct", "torch_layers.py", "EncoderTokens", source=TORCH,
         convention="true_is_padding"),
    case("torch_multihead_attention", "correct", "torch_layers.py", "MultiheadAttentionPool", source=TORCH,
         convention="true_is_padding", fast=True),
]


def argv(entry: dict) -> list[str]:
    return [entry["target"], "--inputs", entry["inputs"], *entry["extra"]]


def verdict(entry: dict, data: dict) -> dict:
    """What the contract found against what is known: found (bug), clean and right convention (others)."""
    risks = [f for f in data["findings"] if f["severity"] == "RISK"]
    if entry["kind"] == "bug":
        found = all(any(f["check"] == r["check"] and (r["where"] is None or r["where"] in (f.get("input"), f.get("dim")))
                        for f in risks) for r in entry["risk"])
        return {"ok": found, "risks": risks}
    conventions = {m["input"]: m["convention"] for m in data["masks"]}
    convention_ok = entry["convention"] is None or entry["convention"] in conventions.values()
    return {"ok": not risks and convention_ok, "risks": risks, "conventions": conventions}
