"""Training configuration from measured numbers and the written rules (`recommend.py`).

Every recommendation names the rule it came from (RULES: one table, each row quoting its source,
most of them the user's agent text, seeds/000 section 4 "Training Configuration Recommendation")
and the measured numbers it used. How rules compose: for each setting the rows are tried in table
order and the first whose condition holds decides (the table lists the most specific rows first);
the other rows that also held are listed beside it, so a conflict is visible, never hidden. Where
no seed rule covers the model the value is None and the text says "outside the written rules";
where a number was not measured the text says "not measured" and names the default used instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from torch import nn

from . import cli, registry, render
from .errors import UserError
from .gpus import DEFAULT_CLUSTER_GPU, DEFAULT_CLUSTER_GPUS_PER_NODE, DEFAULT_CONSUMER_GPU, GpuSpec, find_gpu
from .guard import preserved
from .params import count_parameters

RULE_SOURCE = "written rule"
OUTSIDE = "outside the written rules"
NOT_MEASURED = "not measured"
KINDS = ("transformer", "autoencoder", "ranking", "other")
ARCHITECTURES = ("transformer", "autoencoder")


# ---- architecture kind: a rule table of its own ------------------------------------------------

ATTENTION_CLASSES = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.Transformer)


def _attention_modules(model: nn.Module) -> list[str]:
    return [f"{name or '(root)'} ({type(m).__name__})" for name, m in model.named_modules()
            if isinstance(m, ATTENTION_CLASSES) or "Attention" in type(m).__name__]


@dataclass(frozen=True)
class KindRule:
    id: str
    kind: str
    text: str


# Tried in order; the first architecture rule that matches decides (autoencoder first: a model with
# encoder/decoder children reproducing its input is an autoencoder even if built from attention layers).
KIND_RULES: tuple[KindRule, ...] = (
    KindRule("kind.override", "(as given)", "--kind given: it replaces detection"),
    KindRule("kind.autoencoder", "autoencoder",
             "children named `encoder` and `decoder`, and an output tensor with the input's shape"),
    KindRule("kind.transformer", "transformer",
             "a submodule that is nn.MultiheadAttention / nn.TransformerEncoderLayer / nn.TransformerDecoderLayer / "
             "nn.Transformer, or whose class name contains 'Attention'"),
    KindRule("kind.ranking", "ranking", "the --loss function's name contains 'rank'"),
)
_KIND_RULE = {rule.id: rule for rule in KIND_RULES}


def _tensor_shapes(value: Any) -> list[list[int]]:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return [list(value.shape)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _tensor_shapes(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _tensor_shapes(v)]
    return []


def detect_kind(model: nn.Module, loss_reference: str | None = None,
                run_forward: Callable[[], tuple[list[list[int]], list[list[int]]]] | None = None) -> dict[str, Any]:
    """Architecture kind (transformer / autoencoder / None) and loss kind (ranking / None), with the evidence.

    run_forward() returns (input shapes, output shapes); it is called only when the model has
    `encoder` and `decoder` children, since only the autoencoder rule needs a forward pass."""
    evidence: list[dict[str, Any]] = []
    architecture = None
    children = dict(model.named_children())
    if "encoder" in children and "decoder" in children and run_forward is not None:
        input_shapes, output_shapes = run_forward()
        same = len(input_shapes) == 1 and input_shapes[0] in output_shapes
        if same:
            architecture = "autoencoder"
            evidence.append({"rule": "kind.autoencoder", "text": _KIND_RULE["kind.autoencoder"].text,
                             "matched": f"encoder {type(children['encoder']).__name__}, decoder "
                                        f"{type(children['decoder']).__name__}, output {render.shape(input_shapes[0])} "
                                        f"= input"})
    if architecture is None:
        attention = _attention_modules(model)
        if attention:
            architecture = "transformer"
            more = f" and {len(attention) - 3} more" if len(attention) > 3 else ""
            evidence.append({"rule": "kind.transformer", "text": _KIND_RULE["kind.transformer"].text,
                             "matched": ", ".join(attention[:3]) + more})
    loss_kind = None
    if loss_reference and "rank" in loss_reference.rpartition(":")[2].lower() + os.path.basename(
            loss_reference.rpartition(":")[0]).lower():
        loss_kind = "ranking"
        evidence.append({"rule": "kind.ranking", "text": _KIND_RULE["kind.ranking"].text, "matched": loss_reference})
    return {"architecture": architecture, "loss_kind": loss_kind, "evidence": evidence}


def kind_from_override(kinds: list[str]) -> dict[str, Any]:
    """--kind transformer[,ranking]: the kinds as given."""
    architectures = [k for k in kinds if k in ARCHITECTURES]
    if len(set(architectures)) > 1:
        raise UserError(f"--kind {','.join(kinds)} names two architectures; pick one of transformer, autoencoder "
                        f"(add 'ranking' for a ranking loss)")
    return {"architecture": architectures[0] if architectures else None,
            "loss_kind": "ranking" if "ranking" in kinds else None,
            "evidence": [{"rule": "kind.override", "text": _KIND_RULE["kind.override"].text,
                          "matched": "--kind " + ",".join(kinds)}]}


# ---- the rule table ------------------------------------------------------------------------------

@dataclass
class Role:
    """One hardware setting the batch is chosen for: a single consumer GPU, or the cluster."""

    name: str  # "single_gpu" | "cluster"
    gpu: GpuSpec
    gpus: int
    memory: list[dict[str, Any]]


@dataclass
class Context:
    model: str
    architecture: str | None
    loss_kind: str | None
    total_parameters: int | None
    trainable_parameters: int | None
    steps: int | None
    global_batch: int | None
    l1_regularization: bool
    grads: dict[str, Any] | None
    role: Role | None = None
    decided: dict[str, "Decision"] = field(default_factory=dict)


@dataclass
class Decision:
    value: Any
    text: str
    measured: dict[str, Any]
    justification: str


@dataclass(frozen=True)
class Rule:
    id: str
    setting: str
    quote: str | None  # the seed's own words (section 4), verbatim; None for a rule the seed lacks
    note: str | None  # what else the rule rests on, or why it is not the seed's
    when: Callable[[Context], bool]
    decide: Callable[[Context], Decision]

    @property
    def source(self) -> str:
        parts = [f'{RULE_SOURCE}: "{self.quote}"'] if self.quote else []
        return "; ".join(parts + ([self.note] if self.note else []))


def _params_measured(ctx: Context) -> dict[str, Any]:
    return {"total_parameters": ctx.total_parameters, "trainable_parameters": ctx.trainable_parameters}


def _short(n: int | None) -> str:
    return render.short_count(n)


def short_sci(value: float) -> str:
    """2e-4 style (no zero padding, no trailing zeros): 0.0002 -> '2e-4', 0.00025 -> '2.5e-4'."""
    mantissa, exponent = f"{value:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def _lr(low: float, high: float, ctx: Context, why: str, parameter_limit: int | None = None) -> Decision:
    value = {"min": low, "max": high, "start": low}
    if parameter_limit is not None:
        value["rule_parameter_limit"] = parameter_limit
    return Decision(value, f"{short_sci(low)} to {short_sci(high)} (start at {short_sci(low)})",
                    _params_measured(ctx),
                    f"{why}; measured {render.count(ctx.total_parameters)} parameters. The launch script starts "
                    f"at the lower, conservative end; sweep towards the upper end if loss falls slowly")


def _below(limit: float) -> Callable[[Context], bool]:
    return lambda ctx: ctx.total_parameters is not None and ctx.total_parameters < limit


# Warmup fraction of the total steps (seed: "typically 5-10% of total training steps").
WARMUP_FRACTION = (0.05, 0.10)
# Preferred per-GPU batch by architecture (seed: autoencoders 64-256, transformers 16-32).
BATCH_RANGES = {"autoencoder": (64, 256), "transformer": (16, 32)}
PLATEAU = {"name": "ReduceLROnPlateau", "factor": 0.5, "patience": 3, "min_lr": 1e-6}


def _warmup_steps(ctx: Context) -> Decision:
    low, high = (math.ceil(f * ctx.steps) for f in WARMUP_FRACTION)
    return Decision({"steps_min": low, "steps_max": high, "fraction_min": WARMUP_FRACTION[0],
                     "fraction_max": WARMUP_FRACTION[1], "total_steps": ctx.steps},
                    f"{low:,} to {high:,} steps of linear warmup (5–10 % of {ctx.steps:,})", {"total_steps": ctx.steps},
                    "a transformer trained from scratch warms up over 5–10 % of its steps")


def _memory_fit(ctx: Context) -> Decision:
    """The largest batch that fits the role's GPU: measured by memory.py, or the seed's per-sample rule."""
    role = ctx.role
    budget = role.gpu.usable_memory_bytes()  # the card less the CUDA context and the allocator margin (gpus.py)
    for memory in role.memory:
        matches_gpu = memory.get("budget_bytes") == budget or _gpu_name(memory.get("gpu")) == role.gpu.name
        if matches_gpu and isinstance(memory.get("max_batch_size"), int):
            fits = memory["max_batch_size"]
            used = memory.get("budget_bytes") or budget  # memory.py's own budget (on CUDA: the whole card)
            return Decision(fits, f"{fits} (measured by memory.py for {role.gpu.name})",
                            {"max_batch_size": fits, "budget_bytes": used},
                            f"memory.py's largest batch whose training step fits {render.human_bytes(used)}")
    for memory in role.memory:
        breakdown, batch = memory.get("breakdown"), memory.get("batch_size")
        if isinstance(breakdown, dict) and isinstance(batch, int) and batch > 0:
            fixed = sum(int(breakdown.get(k, 0)) for k in ("params", "grads", "optimizer_state"))
            per_sample = (int(breakdown.get("activations", 0)) + int(breakdown.get("temporaries", 0))) / batch
            fits = int((budget - fixed) // per_sample) if per_sample > 0 else None
            if fits is None:
                break
            fits = max(fits, 0)
            return Decision(fits, f"{fits} (per-sample memory x batch, from memory.py at batch {batch})",
                            {"fixed_bytes": fixed, "per_sample_bytes": per_sample, "measured_at_batch_size": batch,
                             "budget_bytes": budget},
                            f"({render.human_bytes(budget)} - {render.human_bytes(fixed)} params+grads+optimizer) / "
                            f"{render.human_bytes(per_sample)} per sample; assumes activations grow linearly with the batch")
    return Decision(None, NOT_MEASURED, {"budget_bytes": budget},
                    f"no memory evidence for {role.gpu.name}: run memory.py --gpu {role.gpu.name} --json and pass "
                    f"--memory-json")


def _gpu_name(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return find_gpu(value).name
    except UserError:
        return None


def _batch_in_range(ctx: Context) -> Decision:
    low, high = BATCH_RANGES[ctx.architecture]
    fits = ctx.decided["memory_fit"].value
    measured = {"max_batch_that_fits": fits, "preferred_min": low, "preferred_max": high}
    if fits is None:
        return Decision(low, f"{low} ({NOT_MEASURED}: the lower end of the batch rule's {low}–{high})", measured,
                        f"memory was not measured for {ctx.role.gpu.name}, so whether {low} fits is unknown")
    if fits < 1:
        return Decision(None, f"does not fit: batch 1 exceeds {ctx.role.gpu.name}'s memory", measured,
                        "reduce memory (mixed precision, activation checkpointing, a smaller model) or use a larger card")
    value = min(fits, high)
    why = (f"the largest batch that fits is {fits}; the batch rule prefers {low}–{high} for {ctx.architecture}s")
    if fits < low:
        why += f", so {fits} is used and gradient accumulation makes up the rest"
    return Decision(value, str(value), measured, why)


def _batch_largest_fit(ctx: Context) -> Decision:
    fits = ctx.decided["memory_fit"].value
    measured = {"max_batch_that_fits": fits}
    if fits is None:
        return Decision(None, f"{NOT_MEASURED}; {OUTSIDE} (no preferred range for this kind)", measured,
                        "neither a memory measurement nor a written range to choose from")
    if fits < 1:
        return Decision(None, f"does not fit: batch 1 exceeds {ctx.role.gpu.name}'s memory", measured,
                        "reduce memory or use a larger card")
    return Decision(None, f"{OUTSIDE}: no batch range for this kind; {fits} is the memory ceiling, not a recommendation",
                    measured, "the batch rules give ranges for autoencoders and transformers only; the largest batch "
                    "that fits is an upper bound (pass --kind to apply a range)")


def _gpus_text(gpus: int) -> str:
    return f"{gpus} GPU{'s' if gpus > 1 else ''}"


def _accumulation(ctx: Context, target: int, reason: str) -> Decision:
    batch = ctx.decided["batch_size"].value
    gpus = ctx.role.gpus
    steps = math.ceil(target / (batch * gpus))
    effective = batch * gpus * steps
    return Decision(steps, f"{steps} (global batch {effective} = {_gpus_text(gpus)} x {batch} x {steps} steps)",
                    {"per_gpu_batch": batch, "gpus": gpus, "target_global_batch": target, "global_batch": effective},
                    f"ceil({target} / ({batch} x {gpus})) = {steps}; {reason}")


CLIP_DISAGREEMENT_FRACTION = 0.5  # a seed clip norm that clips more of the sampled steps than this is called out


def _clip_measured(ctx: Context) -> dict[str, Any]:
    grads = ctx.grads or {}
    norms = [n for n in grads.get("global_grad_norms") or [] if isinstance(n, (int, float))]
    return {"suggested_clip_norm": grads.get("suggested_clip_norm"),
            "median_global_grad_norm": statistics.median(norms) if norms else None}


def _norm(value: float) -> str:
    """1.0 -> '1.0', 0.5 -> '0.5', 0.123456 -> '0.123' (three significant digits)."""
    return str(float(value)) if float(value) == float(f"{value:.3g}") else f"{value:.3g}"


def _clip(ctx: Context, seed_value: float | tuple[float, float], chosen: float, used: str, why: str) -> Decision:
    measured = _clip_measured(ctx)
    norms = [n for n in (ctx.grads or {}).get("global_grad_norms") or [] if isinstance(n, (int, float))]
    if norms:
        measured["fraction_of_steps_clipped"] = sum(n > chosen for n in norms) / len(norms)
    seed_text = "–".join(map(_norm, seed_value)) if isinstance(seed_value, tuple) else _norm(seed_value)
    suggestion = measured["suggested_clip_norm"]
    clipped = measured.get("fraction_of_steps_clipped")
    disagreement = ""
    if used == "rule" and clipped is not None and clipped > CLIP_DISAGREEMENT_FRACTION:
        disagreement = (f"; the clipping rule and the measurement disagree: max_norm={_norm(chosen)} clips "
                        f"{sum(n > chosen for n in norms)} of {len(norms)} sampled steps (median global norm "
                        f"{_norm(measured['median_global_grad_norm'])}), so clipping rescales nearly every update and acts "
                        f"as a lower learning rate; the rule's value is kept because it is the written rule, and "
                        f"max_norm={_norm(suggestion)} (the measured suggestion) would clip only spikes")
    return Decision({"max_norm": chosen, "rule": list(seed_value) if isinstance(seed_value, tuple) else seed_value,
                     "measured_suggestion": suggestion, "used": used, "norm_type": 2.0,
                     "rule_and_measurement_disagree": bool(disagreement)},
                    f"max_norm={_norm(chosen)} by global norm (rule {seed_text}; measured suggestion "
                    f"{NOT_MEASURED if suggestion is None else _norm(suggestion)}; using the {used} value)",
                    measured, why + disagreement + "; clip the global norm (torch.nn.utils.clip_grad_norm_), not per "
                    "parameter, to keep the gradient's direction")


def _clip_autoencoder(ctx: Context) -> Decision:
    suggestion = _clip_measured(ctx)["suggested_clip_norm"]
    if isinstance(suggestion, (int, float)):
        chosen = min(max(float(suggestion), 0.5), 1.0)
        return _clip(ctx, (0.5, 1.0), chosen, "measured (clamped into the rule's range)",
                     "L1 regularization makes sharp gradients; the measured suggestion is clamped into the L1 clipping rule's 0.5–1.0")
    return _clip(ctx, (0.5, 1.0), 1.0, "rule",
                 f"gradients {NOT_MEASURED}: the upper end of the L1 clipping rule's 0.5–1.0 is used")


def _clip_measured_only(ctx: Context) -> Decision:
    suggestion = float(_clip_measured(ctx)["suggested_clip_norm"])
    decision = _clip(ctx, 0.0, suggestion, "measured", "no written clipping rule covers this kind; grads.py's suggestion")
    decision.value["rule"] = None
    decision.text = f"max_norm={_norm(suggestion)} by global norm (measured; {OUTSIDE})"
    return decision


def _withheld(ctx: Context) -> bool:
    return bool((ctx.grads or {}).get("clip_withheld_reason")) and bool((ctx.grads or {}).get("explosion_cause")
                                                                          or any(f.get("kind") == "exploding_gradient"
                                                                                 for f in (ctx.grads or {}).get("findings", [])))


def _clip_withheld(ctx: Context) -> Decision:
    reason = ctx.grads["clip_withheld_reason"]
    return Decision(None, "no clip norm until the cause of the exploding gradient is fixed", _clip_measured(ctx), reason)


def _has_suggestion(ctx: Context) -> bool:
    return isinstance((ctx.grads or {}).get("suggested_clip_norm"), (int, float))


def _is(architecture: str) -> Callable[[Context], bool]:
    return lambda ctx: ctx.architecture == architecture


def _always(ctx: Context) -> bool:
    return True


RULES: tuple[Rule, ...] = (
    # optimizer --------------------------------------------------------------------------------
    Rule("optimizer.transformer", "optimizer",
         "For transformer modules (SimilarityTransformer): recommend AdamW with weight_decay=0.01 "
         "(prevents overfitting on small datasets)", None, _is("transformer"),
         lambda ctx: Decision({"name": "AdamW", "weight_decay": 0.01}, "AdamW, weight_decay=0.01", {},
                              "transformer: AdamW's decoupled weight decay limits overfitting on small datasets")),
    Rule("optimizer.autoencoder", "optimizer",
         "For autoencoders: recommend Adam with weight_decay=0.0001 (reconstruction stability favors "
         "Adam over SGD)", None, _is("autoencoder"),
         lambda ctx: Decision({"name": "Adam", "weight_decay": 1e-4}, "Adam, weight_decay=1e-4", {},
                              "autoencoder: reconstruction is more stable with Adam than SGD")),
    Rule("optimizer.ranking", "optimizer",
         "For ranking losses: recommend AdamW as it handles sparse gradient signals better",
         "weight_decay=0.01 is the default of torch.optim.AdamW", lambda ctx: ctx.loss_kind == "ranking",
         lambda ctx: Decision({"name": "AdamW", "weight_decay": 0.01}, "AdamW, weight_decay=0.01 (torch default)", {},
                              "ranking loss: AdamW handles sparse gradient signals better")),
    Rule("optimizer.outside", "optimizer", None, "the optimizer rules cover transformers, autoencoders and "
         "ranking losses only", _always,
         lambda ctx: Decision(None, OUTSIDE, {}, "no architecture kind the written rules cover was detected; pass --kind")),
    Rule("adam.betas_eps", "adam_hyperparameters", "Always specify momentum/betas and epsilon values",
         "the written rules give betas (0.9, 0.999), eps 1e-8 (torch.optim.Adam/AdamW defaults)",
         lambda ctx: (ctx.decided["optimizer"].value or {}).get("name") in ("Adam", "AdamW"),
         lambda ctx: Decision({"betas": [0.9, 0.999], "eps": 1e-8}, "betas=(0.9, 0.999), eps=1e-8", {},
                              "the defaults, stated explicitly as the rules ask")),
    Rule("adam.not_applicable", "adam_hyperparameters", None, "betas and eps belong to Adam-family optimizers", _always,
         lambda ctx: Decision(None, OUTSIDE, {}, "no Adam-family optimizer was recommended")),
    # learning rate ------------------------------------------------------------------------------
    Rule("lr.similarity_transformer", "learning_rate",
         "This project's SimilarityTransformer (typically ~10M params): 2e-4 to 1e-3", None,
         lambda ctx: "SimilarityTransformer" in ctx.model and ctx.total_parameters is not None,
         lambda ctx: _lr(2e-4, 1e-3, ctx, "the project's SimilarityTransformer")),
    Rule("lr.transformer_under_100m", "learning_rate", "Transformers with <100M params: 1e-4 to 5e-4", None,
         lambda ctx: ctx.architecture == "transformer" and _below(100e6)(ctx),
         lambda ctx: _lr(1e-4, 5e-4, ctx, "a transformer under 100M parameters", 100_000_000)),
    Rule("lr.autoencoder_under_50m", "learning_rate", "Autoencoders with <50M params: 1e-3 to 5e-3", None,
         lambda ctx: ctx.architecture == "autoencoder" and _below(50e6)(ctx),
         lambda ctx: _lr(1e-3, 5e-3, ctx, "an autoencoder under 50M parameters", 50_000_000)),
    Rule("lr.outside", "learning_rate", None, "the LR rules' ranges end at 100M parameters (transformers) and 50M "
         "(autoencoders)", _always,
         lambda ctx: Decision(None, OUTSIDE, _params_measured(ctx),
                              f"{ctx.architecture or 'unknown kind'} with {render.count(ctx.total_parameters)} "
                              f"parameters is outside the LR rules' ranges; find the LR with a range test")),
    # scheduler ----------------------------------------------------------------------------------
    Rule("scheduler.transformer_warmup_cosine", "scheduler", "LinearWarmupCosineAnnealingLR for transformers", None,
         lambda ctx: ctx.architecture == "transformer" and ctx.steps is not None,
         lambda ctx: Decision({"name": "LinearWarmupCosineAnnealingLR", "total_steps": ctx.steps},
                              f"linear warmup then cosine annealing over {ctx.steps:,} steps", {"total_steps": ctx.steps},
                              "fixed-length transformer training; in torch: SequentialLR([LinearLR(start_factor, "
                              "total_iters=warmup), CosineAnnealingLR(T_max=steps - warmup)], milestones=[warmup])")),
    Rule("scheduler.fixed_cosine", "scheduler", "CosineAnnealingLR for fixed schedule", None,
         lambda ctx: ctx.steps is not None,
         lambda ctx: Decision({"name": "CosineAnnealingLR", "T_max": ctx.steps}, f"CosineAnnealingLR(T_max={ctx.steps})",
                              {"total_steps": ctx.steps}, "a fixed number of steps was given (--steps)")),
    Rule("scheduler.plateau", "scheduler", "ReduceLROnPlateau for early stopping integration",
         "the written rules give ReduceLROnPlateau(factor=0.5, patience=3, min_lr=1e-6)", _always,
         lambda ctx: Decision(dict(PLATEAU), "ReduceLROnPlateau(factor=0.5, patience=3, min_lr=1e-6)", {},
                              "no --steps given, so training length is open: reduce on a validation plateau")),
    # warmup -------------------------------------------------------------------------------------
    Rule("warmup.transformer", "warmup",
         "specify if warmup_steps are needed (typically 5-10% of total training steps)", None,
         lambda ctx: ctx.architecture == "transformer" and ctx.steps is not None, _warmup_steps),
    Rule("warmup.transformer_no_steps", "warmup",
         "specify if warmup_steps are needed (typically 5-10% of total training steps)", "--steps not given",
         _is("transformer"),
         lambda ctx: Decision({"fraction_min": WARMUP_FRACTION[0], "fraction_max": WARMUP_FRACTION[1]},
                              "5–10 % of the total training steps (--steps not given: pass --steps N for a count)",
                              {"total_steps": None}, "total training steps were not given")),
    Rule("warmup.none", "warmup", None, "the transformer warmup rule covers transformers only", _always,
         lambda ctx: Decision(None, f"none ({OUTSIDE} for this kind)", {}, "no warmup rule for this kind")),
    # memory fit and batch, per hardware role ---------------------------------------------------
    Rule("fit.memory", "memory_fit", "Estimate memory per sample in FP32 and multiply by desired batch size",
         "memory.py's max_batch_size for the card's budget is used when given", _always, _memory_fit),
    Rule("batch.autoencoder", "batch_size",
         "For autoencoders: larger batch sizes (64-256) provide stable gradient estimates", None,
         _is("autoencoder"), _batch_in_range),
    Rule("batch.transformer", "batch_size",
         "For transformers: smaller batch sizes (16-32) often work better despite computational inefficiency",
         None, _is("transformer"), _batch_in_range),
    Rule("batch.largest_fit", "batch_size", None, "the batch rules give ranges for autoencoders and transformers only; "
         "the memory limit is reported as a ceiling, no batch is recommended", _always, _batch_largest_fit),
    Rule("accum.not_applicable", "grad_accum", None, "no per-GPU batch was recommended", 
         lambda ctx: ctx.decided["batch_size"].value is None,
         lambda ctx: Decision(None, "—", {}, "no per-GPU batch to accumulate")),
    Rule("accum.global_batch", "grad_accum", None, "accumulation = ceil(global batch / (per-GPU batch x GPUs)), for the "
         "--global-batch asked for", lambda ctx: ctx.global_batch is not None,
         lambda ctx: _accumulation(ctx, ctx.global_batch, "reaches the --global-batch asked for")),
    Rule("accum.memory_constrained", "grad_accum", "Consider gradient accumulation if memory-constrained",
         "accumulation = ceil(the range's lower end / (per-GPU batch x GPUs))",
         lambda ctx: ctx.architecture in BATCH_RANGES and ctx.decided["batch_size"].value is not None
         and ctx.decided["batch_size"].value * ctx.role.gpus < BATCH_RANGES[ctx.architecture][0],
         lambda ctx: _accumulation(ctx, BATCH_RANGES[ctx.architecture][0],
                                   "the per-GPU batch is below the batch rule's range, so steps are accumulated up to its lower end")),
    Rule("accum.none", "grad_accum", None, "no --global-batch asked for and the batch is within the batch rule's range", _always,
         lambda ctx: Decision(1, f"1 (global batch {ctx.decided['batch_size'].value * ctx.role.gpus} = "
                                 f"{_gpus_text(ctx.role.gpus)} x {ctx.decided['batch_size'].value})",
                              {"per_gpu_batch": ctx.decided["batch_size"].value, "gpus": ctx.role.gpus,
                               "global_batch": ctx.decided["batch_size"].value * ctx.role.gpus},
                              "pass --global-batch N to accumulate towards a larger global batch")),
    # clipping -----------------------------------------------------------------------------------
    Rule("clip.transformer", "gradient_clipping",
         "For transformers: clip by global norm to 1.0 (prevents attention instability)",
         "grads.py's suggested_clip_norm is reported beside it", 
         _is("transformer"),
         lambda ctx: _clip(ctx, 1.0, 1.0, "rule", "attention can produce large gradients")),
    Rule("clip.autoencoder_l1", "gradient_clipping",
         "For autoencoders with L1 regularization: clip to 0.5-1.0 (L1 can create sharp gradients)",
         "grads.py's suggested_clip_norm, clamped into 0.5-1.0, when measured",
         lambda ctx: ctx.architecture == "autoencoder" and ctx.l1_regularization, _clip_autoencoder),
    Rule("clip.withheld", "gradient_clipping", None, "grads.py measured exploding gradients: clipping would hide their "
         "measured cause, so none is suggested", _withheld, _clip_withheld),
    Rule("clip.measured", "gradient_clipping", None, "grads.py's suggested_clip_norm (no written rule covers this kind)",
         _has_suggestion, _clip_measured_only),
    Rule("clip.outside", "gradient_clipping", None, "the clipping rules cover transformers, and autoencoders with L1 regularization",
         _always, lambda ctx: Decision(None, f"{NOT_MEASURED}; {OUTSIDE}", _clip_measured(ctx),
                                       "run grads.py (or pass --grads-json) for a measured clip norm")),
)

MODEL_SETTINGS = ("optimizer", "adam_hyperparameters", "learning_rate", "scheduler", "warmup", "gradient_clipping")
ROLE_SETTINGS = ("memory_fit", "batch_size", "grad_accum")


def _decide(setting: str, ctx: Context) -> tuple[Rule, Decision, list[str]]:
    """The first applicable row for a setting decides; the others that applied are named."""
    rows = [rule for rule in RULES if rule.setting == setting]
    applicable = [rule for rule in rows if rule.when(ctx)]
    if not applicable:  # every setting's last row is unconditional; reaching here is a table bug
        raise AssertionError(f"no rule for {setting}")
    winner = applicable[0]
    return winner, winner.decide(ctx), [rule.id for rule in applicable[1:] if rule.when is not _always]


def _entry(setting: str, rule: Rule, decision: Decision, also: list[str], role: str | None = None) -> dict[str, Any]:
    return {"setting": setting, "role": role, "value": decision.value, "text": decision.text, "rule": rule.id,
            "rule_text": rule.source, "measured": decision.measured, "justification": decision.justification,
            "also_applicable": also}


# ---- the pure function the report calls -----------------------------------------------------------

@dataclass
class Options:
    kinds: list[str] | None = None  # --kind override
    steps: int | None = None
    global_batch: int | None = None
    gpu: str = DEFAULT_CONSUMER_GPU
    cluster_gpu: str = DEFAULT_CLUSTER_GPU
    gpus_per_node: int = DEFAULT_CLUSTER_GPUS_PER_NODE
    nodes: int = 1
    l1_regularization: bool = False


def _as_list(memory: Any) -> list[dict[str, Any]]:
    if memory is None:
        return []
    if isinstance(memory, dict):
        return [memory]
    return [m for m in memory if isinstance(m, dict)]


def recommend(evidence: dict[str, Any], options: Options | None = None) -> dict[str, Any]:
    """Recommendations from evidence {"model", "params", "architecture", "memory" (dict or list), "grads"}.

    Pure: reads the evidence, runs nothing. Missing evidence gives "not measured", never a number."""
    options = options or Options()
    architecture = evidence.get("architecture") or {"architecture": None, "loss_kind": None, "evidence": []}
    if options.kinds:
        architecture = kind_from_override(options.kinds)
    params = evidence.get("params") or {}
    ctx = Context(model=str(evidence.get("model") or params.get("model") or "model"),
                  architecture=architecture.get("architecture"), loss_kind=architecture.get("loss_kind"),
                  total_parameters=params.get("total"), trainable_parameters=params.get("trainable"),
                  steps=options.steps, global_batch=options.global_batch,
                  l1_regularization=options.l1_regularization, grads=evidence.get("grads"))
    recommendations = []
    for setting in MODEL_SETTINGS:
        rule, decision, also = _decide(setting, ctx)
        ctx.decided[setting] = decision
        entry = _entry(setting, rule, decision, also)
        recommendations.append(starting_lr(entry, evidence.get("probe")) if setting == "learning_rate" else entry)
    memory = _as_list(evidence.get("memory"))
    roles = [Role("single_gpu", find_gpu(options.gpu), 1, memory),
             Role("cluster", find_gpu(options.cluster_gpu), options.gpus_per_node * options.nodes, memory)]
    hardware = []
    for role in roles:
        role_ctx = replace(ctx, role=role, decided=dict(ctx.decided))
        row = {"role": role.name, "gpu": role.gpu.name, "description": role.gpu.description,
               "memory_bytes": role.gpu.memory_bytes, "gpus": role.gpus}
        for setting in ROLE_SETTINGS:
            rule, decision, also = _decide(setting, role_ctx)
            role_ctx.decided[setting] = decision
            recommendations.append(_entry(setting, rule, decision, also, role.name))
            row[setting] = decision.value
        accumulation = role_ctx.decided["grad_accum"].value
        batch = role_ctx.decided["batch_size"].value
        row["global_batch"] = batch * role.gpus * accumulation if batch and accumulation else None
        if role.name == "cluster":
            row.update(nodes=options.nodes, gpus_per_node=options.gpus_per_node)
        hardware.append(row)
    not_measured = [name for name, present in (("params", bool(params)), ("memory", bool(memory)),
                                               ("grads", bool(evidence.get("grads")))) if not present]
    return {"model": ctx.model, "architecture": architecture,
            "measured": {"total_parameters": ctx.total_parameters, "trainable_parameters": ctx.trainable_parameters,
                         "steps": options.steps, "global_batch": options.global_batch},
            "recommendations": recommendations, "hardware": hardware, "not_measured": not_measured,
            **lr_summary(find({"recommendations": recommendations}, "learning_rate")),
            "issues": probe_issues(evidence.get("probe"))}


# ---- measured training dynamics (probe.py) ----------------------------------------------------------

def lr_text(value: float) -> str:
    """A measured LR in short_sci at 3 significant digits: 1.67373e-4 -> '1.67e-4'."""
    return short_sci(float(f"{value:.3g}"))


def measured_lr(probe: dict[str, Any] | None) -> dict[str, Any] | None:
    """probe.py's suggested LR with where it was measured, or None (not run, cut short, no suggestion)."""
    sweep = (probe or {}).get("lr_range") or {}
    suggested = sweep.get("suggested_lr")
    if not isinstance(suggested, (int, float)) or sweep.get("cut_short"):
        return None
    steps = sweep.get("steps") or {}
    real = str(probe.get("inputs", "")).startswith("--data")
    how = (f"a line search of {steps.get('trials', '?')} training runs of {steps.get('per_trial', '?')} steps"
           if "line_search" in sweep else "probe.py's LR search")
    return {"lr": suggested, "real_data": real, "breakdown_lr": sweep.get("breakdown_lr"),
            "source": f"measured by probe.py ({how}) on " + ("--data batches" if real else "synthetic inputs")}


def starting_lr(entry: dict[str, Any], probe: dict[str, Any] | None) -> dict[str, Any]:
    """The learning-rate entry with ONE starting LR (`value.start`), its `lr_source`, and the other candidate beside
    it (`alternative`: lr, source, why it was not chosen). Measured on --data batches wins over the project rule;
    on synthetic inputs the rule wins (synthetic batches test the wiring, not the LR) unless its start lies at or
    above the measured breakdown LR; without a rule the measurement is used wherever it came from."""
    measured, value = measured_lr(probe), entry["value"]
    rule_start = value.get("start") if isinstance(value, dict) else None
    rule_source = f"the project rule {entry['rule']} ({entry['text']})"
    breakdown = (measured or {}).get("breakdown_lr")
    if measured is None:
        return {**entry, "lr_source": rule_source if rule_start is not None else None, "alternative": None}
    if rule_start is None:
        return {**entry, "value": {"start": measured["lr"], "measured_breakdown_lr": breakdown},
                "text": f"{lr_text(measured['lr'])} ({measured['source']})", "rule": "lr.measured",
                "rule_text": "probe.py's measured LR: no written LR rule covers this model",
                "lr_source": measured["source"], "alternative": None,
                "justification": f"{entry['justification']}. {measured['source']}"}
    rule_breaks = isinstance(breakdown, (int, float)) and rule_start >= breakdown
    if measured["real_data"] or rule_breaks:
        why = ("it was measured on this model's own batches" if measured["real_data"] else
               f"the rule's start lies at or above the measured breakdown LR {lr_text(breakdown)}")
        return {**entry, "value": {**value, "start": measured["lr"], "measured_breakdown_lr": breakdown},
                "text": f"start at {lr_text(measured['lr'])} ({measured['source']})",
                "rule": "lr.measured", "rule_text": "probe.py's line search chooses the LR when measured on real "
                "batches, or when the project rule's start breaks training",
                "lr_source": measured["source"],
                "alternative": {"lr": rule_start, "source": rule_source, "why_not": f"not chosen: {why}"},
                "measured": {**entry["measured"], "probe_suggested_lr": measured["lr"], "breakdown_lr": breakdown},
                "justification": f"{entry['justification']}. Not the rule's {lr_text(rule_start)}: {why}",
                "also_applicable": [entry["rule"], *entry["also_applicable"]]}
    why_not = ("not chosen: measured on synthetic inputs, which test the wiring, not the LR (pass --data for a "
               "measured LR)")
    return {**entry, "lr_source": rule_source,
            "alternative": {"lr": measured["lr"], "source": measured["source"], "why_not": why_not},
            "measured": {**entry["measured"], "probe_suggested_lr": measured["lr"], "breakdown_lr": breakdown},
            "justification": f"{entry['justification']}. probe.py's {lr_text(measured['lr'])} {why_not}"}


def lr_summary(entry: dict[str, Any]) -> dict[str, Any]:
    """recommend's one starting LR: `lr`, `lr_source`, and the other value with why it was not chosen."""
    value = entry["value"]
    return {"lr": value.get("start") if isinstance(value, dict) else None, "lr_source": entry.get("lr_source"),
            "lr_alternative": entry.get("alternative")}


def probe_issues(probe: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Priority 1 when the probed learning rate diverges on one batch, or the model stalls (no better than a constant
    output) with a measured cause or at every LR the line search tried."""
    fit = (probe or {}).get("overfit") or {}
    sweep = (probe or {}).get("lr_range") or {}
    if fit.get("verdict") == "stalled" and sweep.get("learned") and not (probe.get("zero_gradient_parameters")
                                                                        or probe.get("frozen_parameters")):
        return []  # the probed LR is too small: other LRs learn (the starting LR comes from them)
    if fit.get("verdict") not in ("diverges", "stalled"):
        return []
    where = f"lr {fit['lr']:.3g} ({probe.get('lr_source', 'probe.py')}) with {fit['optimizer']}"
    if fit["verdict"] == "diverges":
        state = (f"the loss on one batch went from {fit['losses'][0]:.4g} to {fit['loss_at_divergence']:.4g} at step "
                 f"{fit['diverged_at_step']}")
        breakdown = sweep.get("breakdown_lr")
        fix = ("start below the measured breakdown LR " + f"{breakdown:.3g}" if isinstance(breakdown, (int, float))
               else "lower the LR")
    else:
        state = (f"the loss on one batch went from {fit['losses'][0]:.4g} to {fit['final_loss']:.4g} in {fit['steps']} "
                 f"steps, no better than a constant output")
        fix = "find what blocks learning (dead units, detached paths, frozen parameters: grads.py) before tuning"
    return [{"priority": 1, "title": f"{where} {fit['verdict']} on one batch", "current_state": state,
             "impact": "training diverges" if fit["verdict"] == "diverges" else "training does not learn",
             "fix": fix, "source": "probe.py"}]


def find(result: dict[str, Any], setting: str, role: str | None = None) -> dict[str, Any]:
    """The recommendation for a setting (and hardware role)."""
    for entry in result["recommendations"]:
        if entry["setting"] == setting and entry["role"] == role:
            return entry
    raise KeyError((setting, role))


# ---- SLURM launch script ---------------------------------------------------------------------------

def slurm_context(result: dict[str, Any], job_name: str, time: str, cpus_per_task: int, partition: str | None,
                  train_script: str, account: str | None = None, cpu_only: bool = False) -> dict[str, Any]:
    cluster = next(h for h in result["hardware"] if h["role"] == "cluster")
    if not cluster["batch_size"]:
        raise UserError(f"--slurm-out: no per-GPU batch for {cluster['gpu']} ("
                        f"{find(result, 'batch_size', 'cluster')['text']}); pass --memory-json or --kind")
    lr = find(result, "learning_rate")["value"]
    return {"job_name": job_name, "nodes": cluster["nodes"], "nproc_per_node": cluster["gpus_per_node"],
            "gpus_per_node": 0 if cpu_only else cluster["gpus_per_node"], "account": account,
            "cpus_per_task": cpus_per_task, "time": time, "partition": partition, "train_script": train_script,
            "batch_size": cluster["batch_size"], "grad_accum": cluster["grad_accum"],
            "lr": None if lr is None else short_sci(lr["start"]), "gpu": cluster["gpu"], "global_batch": cluster["global_batch"]}


def render_slurm(context: dict[str, Any]) -> str:
    return render.render_template("slurm_torchrun.sh.j2", context)


# ---- gathering evidence from the other capabilities -------------------------------------------------

def _run_capability(name: str, args: argparse.Namespace, overrides: dict[str, Any] | None = None
                    ) -> tuple[dict[str, Any] | None, str]:
    """Run another capability in-process with this call's options, if installed: (its data, '') or (None, why not)."""
    module = registry.load(name)
    if module is None:
        return None, f"{name}.py is not installed"
    namespace = cli.namespace_for(module.CAPABILITY, args, overrides,
                                  skip=frozenset({"json", "markdown", "debug", "gpu", "evidence"}))
    try:
        return {"schema": module.CAPABILITY.schema, **module.CAPABILITY.analyse(namespace)}, ""
    except UserError as error:
        return None, f"{name}.py: {error}"


def _read_json(path: str, what: str) -> Any:
    if not os.path.isfile(path):
        raise UserError(f"{what} '{path}' does not exist")
    try:
        with open(path, encoding="utf-8") as stream:
            return json.load(stream)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{what} '{path}' is not valid JSON: {error}") from None


def _section(data: Any, name: str, path: str, flag: str) -> dict[str, Any]:
    """A capability's JSON, or its section of a report's analysis.json."""
    if not isinstance(data, dict):
        raise UserError(f"{flag} '{path}' holds {type(data).__name__}, not a JSON object from {name}.py --json")
    schema = str(data.get("schema", ""))
    if schema.startswith("model-expert/report/"):
        if not isinstance(data.get(name), dict):
            raise UserError(f"{flag} '{path}' is a report without a '{name}' section")
        return data[name]
    if schema and not schema.startswith(f"model-expert/{name}/"):
        raise UserError(f"{flag} '{path}' has schema '{schema}'; expected the output of {name}.py --json")
    return data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_model_arguments(parser)
    cli.add_input_arguments(parser)
    cli.add_training_arguments(parser)
    group = parser.add_argument_group("recommendation")
    group.add_argument("--kind", action="append", default=[], metavar="KIND",
                       help=f"override the detected kind: {', '.join(KINDS)}; comma-separated or repeated "
                            f"(e.g. transformer,ranking)")
    group.add_argument("--steps", type=int, metavar="N", help="total training steps (sizes the warmup and the schedule)")
    group.add_argument("--global-batch", type=int, metavar="N", help="target global batch; sets gradient accumulation")
    group.add_argument("--gpu", default=DEFAULT_CONSUMER_GPU, help=f"the single (consumer) GPU (default: {DEFAULT_CONSUMER_GPU})")
    group.add_argument("--cluster-gpu", default=DEFAULT_CLUSTER_GPU,
                       help=f"the cluster node's GPU (default: {DEFAULT_CLUSTER_GPU}, Purdue Anvil's GPU nodes)")
    group.add_argument("--gpus-per-node", type=int, default=DEFAULT_CLUSTER_GPUS_PER_NODE, metavar="N",
                       help=f"GPUs per cluster node (default: {DEFAULT_CLUSTER_GPUS_PER_NODE})")
    group.add_argument("--nodes", type=int, default=1, metavar="N", help="cluster nodes (default: 1)")
    group.add_argument("--l1-regularization", action="store_true", help="the loss has an L1 term (autoencoder clipping rule)")
    group = parser.add_argument_group("evidence (otherwise measured here when memory.py/grads.py are installed)")
    group.add_argument("--params-json", metavar="FILE", help="params.py --json output (else counted here)")
    group.add_argument("--memory-json", action="append", default=[], metavar="FILE",
                       help="memory.py --json output, one per GPU budget (repeatable)")
    group.add_argument("--grads-json", metavar="FILE", help="grads.py --json output")
    group.add_argument("--probe-json", metavar="FILE", help="probe.py --json output (else probed here when a loss is known)")
    group = parser.add_argument_group("SLURM launch script")
    group.add_argument("--slurm-out", metavar="FILE", help="write a SLURM + torchrun launch script for the cluster setting")
    group.add_argument("--job-name", help="SLURM job name (default: the model's name)")
    group.add_argument("--time", default="04:00:00", help="SLURM time limit (default: 04:00:00)")
    group.add_argument("--cpus-per-task", type=int, default=16, metavar="N", help="SLURM cpus per task (default: 16)")
    group.add_argument("--partition", help="SLURM partition (default: none; the cluster's default)")
    group.add_argument("--train-script", default="train.py", help="the training script torchrun starts (default: train.py)")
    group.add_argument("--account", help="SLURM account to charge (Anvil: your allocation, e.g. abc123-gpu)")
    group.add_argument("--cpu-only", action="store_true",
                       help="drop the GPU directives: torchrun starts --gpus-per-node ranks per node on CPUs (gloo); "
                            "for a CPU partition or a local test of the script")
    cli.add_output_arguments(parser)


def l1_attributes(model) -> list[str]:
    """The rule for spotting an L1 term in the loss: a numeric attribute of any submodule whose name
    contains 'l1' (l1_weight, l1_lambda, l1_penalty) with a value above zero."""
    found = []
    for path, module in model.named_modules():
        for name, value in vars(module).items():
            if "l1" in name.lower() and isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                found.append(f"{path + '.' if path else ''}{name}={value:g}")
    return found


def _parse_kinds(values: list[str]) -> list[str]:
    kinds = [k.strip().lower() for value in values for k in value.split(",") if k.strip()]
    for kind in kinds:
        if kind not in KINDS:
            raise UserError(f"unknown --kind '{kind}'; expected one of {', '.join(KINDS)}")
    return kinds


def _check_options(args: argparse.Namespace) -> None:
    for flag, value in (("--steps", args.steps), ("--global-batch", args.global_batch),
                        ("--gpus-per-node", args.gpus_per_node), ("--nodes", args.nodes),
                        ("--cpus-per-task", args.cpus_per_task)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be a positive whole number, not {value}")
    find_gpu(args.gpu)
    try:
        find_gpu(args.cluster_gpu)
    except UserError as error:
        raise UserError(str(error).replace("--gpu", "--cluster-gpu")) from None


def analyse(args: argparse.Namespace) -> dict[str, Any]:
    _check_options(args)
    kinds = _parse_kinds(args.kind)
    params_file = _section(_read_json(args.params_json, "--params-json"), "params", args.params_json,
                           "--params-json") if args.params_json else None
    memory = [_section(_read_json(p, "--memory-json"), "memory", p, "--memory-json") for p in args.memory_json]
    grads = _section(_read_json(args.grads_json, "--grads-json"), "grads", args.grads_json,
                     "--grads-json") if args.grads_json else None
    # report.py hands over what it already measured (no second run of memory.py / grads.py).
    provided = getattr(args, "evidence", None) or {}
    params_file = params_file or provided.get("params")
    memory = memory or list(provided.get("memory") or [])
    grads = grads if grads is not None else provided.get("grads")
    session = cli.open_session(args)
    model = session.model
    sources: dict[str, str] = {}

    def forward_shapes():
        from .runner import call_model
        import torch
        inputs = session.build_inputs()
        with torch.no_grad():  # inside the caller's preserved(model)
            output = call_model(model, inputs, session.loaded.name)
        return _tensor_shapes((inputs.args, inputs.kwargs)), _tensor_shapes(output)

    with preserved(model):
        params = params_file or count_parameters(model)
        architecture = kind_from_override(kinds) if kinds else detect_kind(model, args.loss, forward_shapes)
    l1_terms = l1_attributes(model)
    l1_regularization = args.l1_regularization or bool(l1_terms)
    sources["l1_regularization"] = ("--l1-regularization" if args.l1_regularization else
                                    f"detected: {', '.join(l1_terms)}" if l1_terms else "none detected")
    sources["params"] = (f"--params-json {args.params_json}" if args.params_json else
                         "report.py's params section" if params_file else "counted here (params.py)")
    if memory:
        sources["memory"] = ("--memory-json " + " ".join(args.memory_json) if args.memory_json
                             else "report.py's memory sections")
    else:
        for gpu in dict.fromkeys((find_gpu(args.gpu).name, find_gpu(args.cluster_gpu).name)):
            data, why = _run_capability("memory", args, {"gpu": gpu})
            if data is not None:
                memory.append(data)
            sources["memory"] = "measured here (memory.py)" if memory else f"{NOT_MEASURED}: {why}"
    if grads is not None:
        sources["grads"] = f"--grads-json {args.grads_json}" if args.grads_json else "report.py's grads section"
    elif "grads" in provided:  # the report skipped it or its budget cut it: not run a second time here
        sources["grads"] = f"{NOT_MEASURED} in the report"
    else:
        grads, why = _run_capability("grads", args)
        sources["grads"] = "measured here (grads.py)" if grads is not None else f"{NOT_MEASURED}: {why}"
    probe = _section(_read_json(args.probe_json, "--probe-json"), "probe", args.probe_json,
                     "--probe-json") if getattr(args, "probe_json", None) else provided.get("probe")
    if probe is not None:
        sources["probe"] = f"--probe-json {args.probe_json}" if getattr(args, "probe_json", None) else "report.py's probe section"
    elif "probe" in provided:
        sources["probe"] = f"{NOT_MEASURED} in the report"
    else:
        # the review's fixed workload (recommend's own --steps is the training run's length, not probe's)
        probe_module = registry.load("probe")
        workload = {"steps": probe_module.REVIEW_STEPS, "sweep_steps": probe_module.REVIEW_SWEEP_STEPS,
                    "search_steps": probe_module.REVIEW_SEARCH_STEPS} if probe_module else None
        probe, why = _run_capability("probe", args, workload)
        sources["probe"] = "measured here (probe.py)" if probe is not None else f"{NOT_MEASURED}: {why}"
    options = Options(kinds=None, steps=args.steps, global_batch=args.global_batch, gpu=args.gpu,
                      cluster_gpu=args.cluster_gpu, gpus_per_node=args.gpus_per_node, nodes=args.nodes,
                      l1_regularization=l1_regularization)
    result = recommend({"model": type(session.model).__name__, "params": params, "architecture": architecture,
                        "memory": memory, "grads": grads, "probe": probe}, options)
    result = {"target": args.target, **result, "evidence_sources": sources}
    if args.slurm_out:
        context = slurm_context(result, args.job_name or session.loaded.name, args.time, args.cpus_per_task,
                                args.partition, args.train_script, args.account, args.cpu_only)
        cli.write_atomically(args.slurm_out, render_slurm(context))
        result["slurm"] = {"path": args.slurm_out, **context}
    return result


# ---- rendering -----------------------------------------------------------------------------------------

def _measured_text(measured: dict[str, Any]) -> str:
    parts = []
    for name, value in measured.items():
        if value is None:
            parts.append(f"{name}={NOT_MEASURED}")
        elif isinstance(value, float):
            parts.append(f"{name}={value:.4g}")
        elif isinstance(value, int):
            parts.append(f"{name}={value:,}")
        else:
            parts.append(f"{name}={value}")
    return ", ".join(parts) or "—"


def _rows(data: dict[str, Any]) -> list[list[str]]:
    return [[entry["setting"] + (f" ({entry['role']})" if entry["role"] else ""), entry["text"], entry["rule"],
             _measured_text(entry["measured"])] for entry in data["recommendations"]]


def _kind_text(data: dict[str, Any]) -> str:
    arch = data["architecture"]
    kinds = [k for k in (arch.get("architecture"), arch.get("loss_kind")) if k] or ["none detected"]
    rules = "; ".join(f"{e['rule']}: {e['matched']}" for e in arch.get("evidence", []))
    return f"{' + '.join(kinds)}" + (f" ({rules})" if rules else "")


def starting_lr_text(data: dict[str, Any]) -> str | None:
    """'2e-4 (source); beside it 0.0207 (source): not chosen: why' — the one starting LR, or None without one."""
    if data.get("lr") is None:
        return None
    text = f"{lr_text(data['lr'])} ({data['lr_source']})"
    other = data.get("lr_alternative")
    if other:
        text += f"; beside it {lr_text(other['lr'])} ({other['source']}), {other['why_not']}"
    return text


def render_table(data: dict[str, Any], args: argparse.Namespace) -> str:
    lr = starting_lr_text(data)
    parts = [f"Training configuration for {data['model']} ({data.get('target', '')})",
             f"Kind: {_kind_text(data)}",
             f"Parameters: {render.count(data['measured']['total_parameters'])}",
             *([f"Starting LR: {lr}"] if lr else []), "",
             render.table(_rows(data), ["setting", "recommendation", "rule", "measured"]), ""]
    parts += [f"Priority {i['priority']}: {i['title']}: {i['current_state']}; fix: {i['fix']} ({i['source']})"
              for i in data.get("issues", [])]
    parts += [f"{key}: {value}" for key, value in data.get("evidence_sources", {}).items()]
    if data.get("slurm"):
        parts.append(f"SLURM launch script written to {data['slurm']['path']}")
    return "\n".join(parts)


def render_markdown(data: dict[str, Any], args: argparse.Namespace) -> str:
    rows = [[entry["setting"] + (f" ({entry['role']})" if entry["role"] else ""), entry["text"],
             f"`{entry['rule']}`", _measured_text(entry["measured"]), entry["justification"]]
            for entry in data["recommendations"]]
    lr = starting_lr_text(data)
    parts = [f"### Training configuration: {data['model']}", "", f"**Kind**: {_kind_text(data)}", "",
             *([f"**Starting LR**: {lr}", ""] if lr else []),
             render.markdown_table(rows, ["setting", "recommendation", "rule", "measured", "why"]), ""]
    parts += [f"**Priority {i['priority']}**: {i['title']}: {i['current_state']}; fix: {i['fix']} ({i['source']})"
              for i in data.get("issues", [])]
    parts += ["", "Rules:", ""] if data.get("issues") else ["Rules:", ""]
    seen = []
    for entry in data["recommendations"]:
        if entry["rule"] not in seen:
            seen.append(entry["rule"])
            parts.append(f"- `{entry['rule']}`: {entry['rule_text']}")
    return "\n".join(parts)


CAPABILITY = cli.Capability(
    name="recommend", version=1,
    description="Training configuration (optimizer, LR, scheduler, warmup, batch, accumulation, clipping) from "
                "measured parameters, memory and gradients and the written rules; optional SLURM script.",
    add_arguments=add_arguments, analyse=analyse, render_table=render_table, render_markdown=render_markdown)
