"""Evidence (analysis.json) -> the values the templates print, already formatted.

Every number printed comes from the evidence; a derived number (per-sample memory, milliseconds)
is first written into the evidence's `derived` section by `derive`, so the grounding check finds it.
"""

from __future__ import annotations

import math
from typing import Any

from . import render
from .contract import cli as contract_view
from .grads import mermaid_chart
from .memory.cli import FULL_SIZE_LABELS

NOT_MEASURED = "not measured"
DATA_FIXED = f"{NOT_MEASURED}: --data batches have the size the data gives them (review with --input or --inputs to search it)"
# recommend's settings -> the seed's Training Configuration headings, in the seed's order.
TRAINING_HEADINGS = {
    "optimizer": "Optimizer", "adam_hyperparameters": "Optimizer",
    "learning_rate": "Learning Rate", "scheduler": "Learning Rate", "warmup": "Learning Rate",
    "memory_fit": "Batch Size", "batch_size": "Batch Size", "grad_accum": "Batch Size",
    "gradient_clipping": "Gradient Clipping",
    "loss": "Loss Function", "loss_function": "Loss Function",
}
HEADING_ORDER = ("Optimizer", "Learning Rate", "Batch Size", "Gradient Clipping", "Loss Function", "Other")
# Which automatic findings become which priority (the reviewer's own findings carry theirs).
SEVERITY_PRIORITY = {"RISK": 1, "CAUTION": 2}
# contract.py's checks -> the issue title and what a violation costs.
CONTRACT_CHECKS = {
    "mask": ("padding mask", "outputs depend on padding: a dataset's scores change with how much padding its batch has"),
    "all_padded": ("all-padding sample", "an empty dataset gets NaN scores, which poison the "
                   "ranking and the loss at inference"),
    "batch": ("batch independence", "a sample's output depends on the other samples of its batch"),
    "permutation": ("set order", "the output changes when the set is reordered, though a set has no order"),
    "range": ("output range", "what the loss receives"),
    "determinism": ("determinism", "results are not reproducible"),
    "inplace": ("input written in place", "the caller's batch changes with every call, so a second call (or the "
                "loss reading the same tensor) sees other values"),
}
# Last modules that squash the output into a bounded range (bad before a ranking/cross-entropy loss).
BOUNDED_OUTPUT_MODULES = {"Sigmoid", "Softmax", "Tanh", "LogSoftmax", "Hardtanh", "Softsign"}
# Weight initialisation advice by architecture kind (the seed's Implementation Checklist example).
INIT_ADVICE = {"transformer": "Xavier-uniform for attention and projection weights (the transformer initialisation rule)",
               "autoencoder": "He (Kaiming) initialisation for the ReLU encoder/decoder layers (the ReLU initialisation rule)"}


def _get(data: Any, *path: Any, default: Any = None) -> Any:
    for key in path:
        if isinstance(data, dict) and key in data:
            data = data[key]
        elif isinstance(data, list) and isinstance(key, int) and -len(data) <= key < len(data):
            data = data[key]
        else:
            return default
    return data


def derive(evidence: dict[str, Any]) -> dict[str, Any]:
    """Numbers the review prints that no single capability printed, computed once and kept as evidence."""
    derived: dict[str, Any] = {}
    batch = _get(evidence, "memory", "batch_size")
    activations = _get(evidence, "memory", "activation_bytes_end_of_forward")  # saved for backward, forward done
    if batch and activations is not None:
        derived["activation_bytes_per_sample"] = activations / batch
    if evidence.get("data") and _data_batch(evidence):
        derived["data_batch_size"] = _data_batch(evidence)
    # the epoch at the batch the review states its figures at (the recommended one where measured)
    primary = batch_views(evidence)[0]
    step_seconds = _get(evidence, primary["flops"], "estimated_step_seconds") if primary["flops"] else None
    flops_batch = primary["batch"]
    samples = evidence.get("samples_per_epoch")
    if samples and step_seconds is not None and flops_batch:
        derived["epoch_batch_size"] = flops_batch
        derived["steps_per_epoch"] = math.ceil(samples / flops_batch)
        derived["epoch_seconds"] = derived["steps_per_epoch"] * step_seconds
    forward, backward = _get(evidence, "flops", "forward_flops"), _get(evidence, "flops", "backward_flops")
    if forward is not None and backward is not None:
        derived["training_flops_per_batch"] = forward + backward
    quadratic = _get(evidence, "trace", "vary", "quadratic_intermediates") or []
    if quadratic:
        derived["quadratic_module_count"] = len({item["module"] for item in quadratic})
    profile = [p for p in _get(evidence, "grads", "depth_profile", default=[]) if p.get("grad_norm_mean") is not None]
    if profile:
        derived["gradient_layer_count"] = len(profile)
    if evidence.get("trace"):
        derived["dropout_call_count"] = sum(1 for c in evidence["trace"]["calls"] if "Dropout" in c["type"])
    modes = _get(evidence, "trace", "train_mode")
    if modes:  # the counts the model.eval() checklist item states
        counts = {"dropout_modules": len(modes["dropout_modules"]), "batchnorm_modules": len(modes["batchnorm_modules"])}
        for m in modes["inner_dropout"]:
            counts[f"inner_dropout_{m['type']}"] = counts.get(f"inner_dropout_{m['type']}", 0) + 1
        derived["train_mode_counts"] = counts
    by_op = _get(evidence, "flops", "flops_by_op") or {}
    if by_op:
        derived["training_flops_by_op"] = {op: v["forward_flops"] + v["backward_flops"] for op, v in by_op.items()}
    return derived


def recommended_batch(evidence: dict[str, Any]) -> int | None:
    """recommend's single-GPU batch size, when it gave one."""
    for entry in _get(evidence, "recommend", "recommendations", default=[]):
        if entry.get("setting") == "batch_size" and entry.get("role") == "single_gpu" and isinstance(entry.get("value"), int):
            return entry["value"]
    return None


def _data_batch(evidence: dict[str, Any]) -> int | None:
    """The leading dim of the first --data batch's first input, as traced."""
    first = next(iter(_get(evidence, "trace", "inputs", default=[])), None)
    return first["shape"][0] if first and first.get("shape") else None


def batch_views(evidence: dict[str, Any]) -> list[dict[str, Any]]:
    """The batches the review states memory and time at, the one it recommends first: each {batch, label, memory,
    flops} (evidence keys, None where not measured). With --data the batch is the data's; the traced batch follows
    the recommended one where they differ."""
    traced = _get(evidence, "memory", "batch_size") or _get(evidence, "flops", "batch_size")
    memory = "memory" if evidence.get("memory") else None
    flops = "flops" if evidence.get("flops") else None
    if evidence.get("data"):
        batch = traced or _data_batch(evidence)
        return [{"batch": batch, "label": f"the --data batch {batch}" if batch else "the --data batches",
                 "memory": memory, "flops": flops}]
    recommended = recommended_batch(evidence)
    if recommended is None or recommended == traced:
        return [{"batch": traced, "label": f"{'the recommended' if recommended else 'the traced'} batch {traced}",
                 "memory": memory, "flops": flops}]
    return [{"batch": recommended, "label": f"the recommended batch {recommended}",
             "memory": "memory_recommended_batch" if evidence.get("memory_recommended_batch") else None,
             "flops": "flops_recommended_batch" if evidence.get("flops_recommended_batch") else None},
            {"batch": traced, "label": f"the traced batch {traced}", "memory": memory, "flops": flops}]


def why_not_measured(evidence: dict[str, Any], *keys: str) -> str:
    """Why a value is missing, in words: the first section's recorded reason, else it was skipped."""
    reasons = evidence.get("not_measured", {})
    for key in keys:
        if key in reasons:
            return f"{NOT_MEASURED}: {reasons[key]}"
    section = keys[-1].split("_")[0] if keys else "it"
    return f"{NOT_MEASURED}: {section}.py did not run (--skip {section})" if keys else NOT_MEASURED


def _tensor_rows(rows: list[dict[str, Any]], ranges: dict[str, str] | None = None) -> list[dict[str, str]]:
    return [{"name": r["name"], "shape": render.shape(r["shape"]), "dtype": f"torch.{r['dtype']}",
             "range": (ranges or {}).get(r["name"], NOT_MEASURED)} for r in rows]


def _ranges(evidence: dict[str, Any], key: str, formatter) -> dict[str, str]:
    """Input or output name -> its range as contract.py measured it (or its spec states it)."""
    return {row["name"]: formatter(row) for row in _get(evidence, "contract", key, default=[])}


def _contracts(evidence: dict[str, Any]) -> list[str]:
    """The "Contracts (measured)" lines: masks, batch independence, order along each named dim."""
    data = evidence.get("contract")
    if not data:
        return []
    lines = contract_view.render_lines(data)
    return ([f"**Padding mask**: {line}" for line in lines["masks"]]
            + [f"**Batch independence**: {line}" for line in lines["batch"]]
            + [f"**Order**: {line}" for line in lines["permutations"]]
            + [f"**Tolerance**: {data['tolerance']['rule']}"])


def _overview(evidence: dict[str, Any], derived: dict[str, Any]) -> dict[str, Any]:
    params, memory, flops = evidence.get("params", {}), evidence.get("memory"), evidence.get("flops")
    if "recommend" in evidence:
        kind = _get(evidence, "recommend", "architecture", "architecture") or "none of the kind rules matched"
    else:
        kind = NOT_MEASURED
    if memory:
        views = [(view, evidence[view["memory"]]) for view in batch_views(evidence) if view["memory"]]
        memory_line = ("; ".join(f"{render.mib(at['peak_bytes'])} peak per training step at {view['label']}"
                                 for view, at in views)
                       + f" ({memory.get('precision', 'fp32')}, {memory.get('optimizer', 'adamw')}, "
                       f"{memory.get('target_device', 'cuda')} rules{' for ' + memory['rules_gpu'] if memory.get('rules_gpu') else ''}); "
                       + "; ".join(f"{render.mib(at['inference_peak_bytes'])} for inference at {view['label']}"
                                   for view, at in views))
    else:
        memory_line = why_not_measured(evidence, "memory")
    if flops:
        complexity = (f"{render.flops(flops['forward_flops'])} forward + {render.flops(flops['backward_flops'])} backward "
                      f"per batch of {flops.get('batch_size') or _data_batch(evidence)} (counted with the "
                      f"{flops.get('attention_kernels_of') or flops.get('device')} target's kernels)")
    else:
        complexity = why_not_measured(evidence, "flops")
    quadratic = _get(evidence, "trace", "vary", "quadratic_intermediates") or []
    if quadratic:
        modules = sorted({item["module"] for item in quadratic})
        complexity += (f"; attention-like tensors grow quadratically with {evidence['trace']['vary']['dim']} in "
                       f"{derived['quadratic_module_count']} module(s) (e.g. {modules[0]} {quadratic[0]['symbolic']})")
    components = [f"`{m['name']}` ({m['type']}, {render.count(m['parameters'])} parameters)"
                  for m in params.get("modules", []) if m["depth"] == 1]
    return {"type": kind, "total": render.count(params.get("total")), "total_short": render.short_count(params.get("total")),
            "trainable": render.count(params.get("trainable")), "frozen": render.count(params.get("frozen")),
            "memory": memory_line, "complexity": complexity, "components": components}


def _walkthrough(trace: dict[str, Any] | None) -> str:
    if not trace:
        return NOT_MEASURED
    rows = [[str(c["index"]), f"`{c['module']}`", c["type"],
             "; ".join(f"{r['dtype']}{render.shape(r['shape'])}" for r in c["inputs"]) or "-",
             "; ".join(f"{r['dtype']}{render.shape(r['shape'])}" for r in c["outputs"]) or "-"]
            for c in trace["calls"] if c["depth"] <= 2]
    return render.markdown_table(rows, ["#", "module", "type", "inputs", "outputs"])


def _scaling(trace: dict[str, Any] | None) -> list[str]:
    vary = (trace or {}).get("vary")
    if not vary:
        return []
    small, large = vary["sizes"]
    lines = [f"Traced at {vary['dim']} = {small} and {large}."]
    shapes_by_module: dict[str, list[str]] = {}
    for item in vary.get("quadratic_intermediates", []):
        shapes_by_module.setdefault(item["module"], []).append(item["symbolic"])
    dim = vary["dim"]
    modules_by_pattern: dict[tuple[str, ...], list[str]] = {}  # one CAUTION per pattern, not one per layer
    for module, shapes in shapes_by_module.items():
        modules_by_pattern.setdefault(tuple(shapes), []).append(module)
    for shapes, modules in modules_by_pattern.items():
        lines.append(f"**[CAUTION]** {_modules_text(modules)} build{'s' if len(modules) == 1 else ''} "
                     f"{' and '.join(shapes)} tensors on the traced attention path: memory there grows as {dim}² "
                     f"(CUDA's fused attention, which the memory estimate models, keeps O({dim}) per head; the "
                     f"score FLOPs still grow as {dim}², see below)")
    modules_by_growth: dict[tuple[float, float | None], list[str]] = {}
    for growth in vary.get("flop_growth", []):
        if growth["superlinear"]:
            modules_by_growth.setdefault((growth["exponent"], growth.get("score_exponent")), []).append(growth["module"])
    for (exponent, score_exponent), modules in modules_by_growth.items():
        lines.append(f"{_modules_text(modules)}: FLOPs grow as {dim}^{exponent} in total"
                     + (f"; the attention-score FLOPs inside (Q·Kᵀ and scores·V) grow as {dim}^{score_exponent}, "
                        f"the linear projections around them as {dim}^1, so the total tends to {dim}² as "
                        f"{dim} grows" if score_exponent is not None else ""))
    return lines


def _modules_text(modules: list[str]) -> str:
    return (f"`{modules[0]}`" if len(modules) == 1
            else f"{len(modules)} modules (" + ", ".join(f"`{m}`" for m in modules) + ")")


def _gradient(evidence: dict[str, Any]) -> dict[str, Any]:
    grads, trace = evidence.get("grads"), evidence.get("trace")
    forward_path = NOT_MEASURED
    if trace:
        steps = [f"`{c['module']}` → {'; '.join(render.shape(r['shape']) for r in c['outputs'])}"
                 for c in trace["calls"] if c["depth"] == 1]
        forward_path = ", then ".join(steps) if steps else NOT_MEASURED
    if not grads:
        return {"forward_path": forward_path, "backward_path": NOT_MEASURED, "stability": NOT_MEASURED,
                "reasoning": [evidence.get("not_measured", {}).get("grads", "grads.py did not run")], "chart": "",
                "groups": [], "global_norms": NOT_MEASURED}
    profile = [p for p in grads.get("depth_profile", []) if p.get("grad_norm_mean") is not None]
    if len(profile) >= 2:
        backward_path = (f"gradient norm {render.sci(profile[-1]['grad_norm_mean'])} at `{profile[-1]['layer']}` "
                         f"(nearest the loss) and {render.sci(profile[0]['grad_norm_mean'])} at `{profile[0]['layer']}` "
                         f"(nearest the input), over {evidence['derived']['gradient_layer_count']} layers in forward order")
    else:
        backward_path = "fewer than two layers received gradient"
    reasoning = [f"**{f['severity']}** {f['kind']} at `{f['where']}`: {f['message']}" for f in grads.get("findings", [])
                 if f["severity"] in ("RISK", "CAUTION")] or ["no RISK or CAUTION finding in the sampled batches"]
    if grads.get("optimizer"):
        low, high = grads["healthy_update_band"]
        reasoning.append(f"judged by what {grads['optimizer']} at lr {grads['lr']:g} ({grads['lr_source']}) does: the size "
                         f"of one update |Δw|/|w| per layer against the healthy band {low:g} to {high:g}, over "
                         f"{grads['batches']} batches ({grads['samples']} samples of {grads['inputs']} inputs)")
    groups = [f"`{name}` (prefix `{g['prefix']}`): {'reached' if g['reached'] else '**NOT reached**'}, "
              f"{g['parameters_reached']} of {g['trainable']} trainable tensors got gradient, "
              f"mean norm {render.sci(g['grad_norm'])}" for name, g in grads.get("groups", {}).items()]
    norms = grads.get("global_grad_norms", [])
    global_norms = ", ".join(render.sci(n) for n in norms if isinstance(n, (int, float))) or NOT_MEASURED
    return {"forward_path": forward_path, "backward_path": backward_path, "stability": grads.get("stability", NOT_MEASURED),
            "reasoning": reasoning, "chart": mermaid_chart(grads["depth_profile"]) if grads.get("depth_profile") else "",
            "groups": groups, "global_norms": global_norms}


def _dynamics(evidence: dict[str, Any]) -> dict[str, Any]:
    """probe.py's measurements: lines for Gradient Flow (fit one batch, update size, charts) and Training
    Configuration (the stable learning rates)."""
    probe = evidence.get("probe")
    if not probe:
        why = evidence.get("not_measured", {}).get("probe")  # None: --skip probe, nothing to say
        return {"measured": False, "gradient": [f"{NOT_MEASURED}: {why}"] if why else [], "training": [], "charts": []}
    from .probe.charts import line_chart
    from .probe.cli import summary_rows
    rows = dict(summary_rows(probe))
    fit, update = probe["overfit"], probe["update_ratio"]
    gradient = [f"**Fit one batch** ({probe['loss']}; {probe['inputs']}): {rows['fit one batch']}",
                f"**Initial loss**: {rows['initial loss']}; expected {rows['expected initial loss']}",
                f"**Update size** after one {update['optimizer']} step at lr {update['lr']:.3g}: median "
                f"log10(|dw|/|w|) {rows['median log10(|dw|/|w|)']}; {len(update['outside_band'])} of "
                f"{len(update['layers'])} parameter tensors outside the band ({update['band_source']})"]
    gradient += [f"**{f['severity']}** {f['check']}: {f['text']}" for f in probe["findings"]
                 if f["severity"] in ("RISK", "CAUTION") and f["check"] in ("fit_one_batch", "initial_loss")]
    from .recommend import starting_lr_text
    starting = starting_lr_text(evidence.get("recommend") or {})  # the review's one LR: recommend chose it
    training = [f"**Learning rate probed**: {rows['learning rate']}, optimizer {fit['optimizer']}",
                *([f"**Starting LR**: {starting}"] if starting else []),
                f"**Breakdown LR**: {rows['breakdown LR']}; **measured LR**: {rows['suggested LR']} "
                f"({rows['LR search steps']})",
                f"**Method**: {probe['lr_range']['method']}"]
    training += [f"**{f['severity']}** {f['check']}: {f['text']}" for f in probe["findings"]
                 if f["severity"] in ("RISK", "CAUTION") and f["check"] == "lr_range"]
    charts = [chart for chart in (line_chart((probe.get("charts") or {}).get(key)) for key in ("overfit", "lr_range")) if chart]
    return {"measured": True, "gradient": gradient, "training": training, "charts": charts}


def _training(evidence: dict[str, Any]) -> list[dict[str, Any]]:
    recommendations = _get(evidence, "recommend", "recommendations") or []
    sections: dict[str, list[dict[str, str]]] = {}
    for item in recommendations:
        heading = TRAINING_HEADINGS.get(item["setting"], "Other")
        label = item["setting"].replace("_", " ") + (f" ({item['role'].replace('_', ' ')})" if item.get("role") else "")
        justification = item.get("justification", "")
        if item["setting"] == "memory_fit" and item.get("value") is None:  # recommend.py's own advice names its options
            justification = (f"no memory evidence for this card in the review: "
                             + why_not_measured(evidence, "memory_cluster" if item.get("role") == "cluster" else "memory",
                                                "memory"))
        sections.setdefault(heading, []).append({"label": label, "text": item["text"],
                                                 "justification": justification,
                                                 "rule": item.get("rule", "")})
    return [{"heading": heading, "entries": sections[heading]} for heading in HEADING_ORDER if heading in sections]


def _loss(evidence: dict[str, Any]) -> dict[str, str]:
    """What the loss receives, from the trace: the seed's loss-alignment check."""
    outputs = _get(evidence, "trace", "outputs") or []
    floating = [o for o in outputs if o["dtype"].startswith(("float", "bfloat"))]
    last_types = [c["type"] for c in _get(evidence, "trace", "calls", default=[]) if c["depth"] == 1][-1:]
    bounded = last_types and last_types[0] in BOUNDED_OUTPUT_MODULES
    ranking = _get(evidence, "recommend", "architecture", "loss_kind") == "ranking"
    needs_logits = loss_needs_logits(evidence)
    if bounded:
        output_range = (f"bounded: the last module is {last_types[0]}"
                        + ("; a ranking loss wants unbounded logits for smooth gradients" if ranking else
                           "; a cross-entropy/with-logits loss wants unbounded logits" if needs_logits else
                           "; fine for a loss that takes it as is (MSE, BCE)"))
    else:
        output_range = "unbounded (no sigmoid/softmax/tanh as the last module)" + (", as a ranking loss wants" if ranking else "")
    return {
        "function": evidence.get("loss") or "default: output.loss if present, else the mean of the floating outputs",
        "receives": ", ".join(f"`{o['name']}` {o['dtype']}{render.shape(o['shape'])}" for o in floating) or NOT_MEASURED,
        "range": output_range,
    }


# Words in a loss function's file that mean it takes logits: a bounded head (sigmoid, softmax) before it is a defect.
LOGIT_LOSS_WORDS = ("cross_entropy", "CrossEntropyLoss", "with_logits", "WithLogits", "nll_loss", "NLLLoss",
                    "log_softmax", "margin_ranking", "MarginRankingLoss")


def loss_needs_logits(evidence: dict[str, Any]) -> bool:
    """True when the loss wants unbounded logits: a ranking loss (recommend's loss kind), or a --loss whose file
    uses cross-entropy / a with-logits loss / log_softmax. A sigmoid before MSE or BCE is a fine head."""
    if _get(evidence, "recommend", "architecture", "loss_kind") == "ranking":
        return True
    import ast
    loss = evidence.get("loss") or ""
    path, _, name = loss.partition(":")
    if not path.strip().endswith(".py"):
        return False
    try:
        with open(path.strip(), encoding="utf-8") as stream:
            source = stream.read()
        tree = ast.parse(source)
    except (OSError, SyntaxError):
        return False
    # the loss function's own text (not the whole file's: it may hold other losses)
    function = next((node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.ClassDef))
                     and node.name == name.strip()), None)
    text = ast.get_source_segment(source, function) if function is not None else source
    return any(word in (text or "") for word in LOGIT_LOSS_WORDS)


# grads.py's finding kinds -> (what goes wrong in training, what to change at the finding's module).
GRADS_ADVICE = {
    "non_finite_activation": ("the loss becomes NaN/inf at the first step and every weight it reaches is ruined",
                              "guard the operation at `{where}` that produces inf/NaN (a log or division of zero, an "
                              "overflow): clamp its input or add an eps"),
    "non_finite_gradient": ("one step writes NaN/inf into `{where}` and the optimizer state; training cannot recover",
                            "find the inf/NaN source in the backward of `{where}` (a sqrt/log/division at 0); clamp "
                            "it, and clip the global gradient norm"),
    "detached": ("`{where}` never learns: its weights stay at their initial values however long you train",
                 "remove what cuts the graph between `{where}` and the loss (a .detach(), torch.no_grad(), an "
                 ".item()/.numpy() round trip or an integer cast)"),
    "unused": ("`{where}` never learns and still costs memory and optimizer state",
               "call `{where}` in forward, or delete it (or set requires_grad=False if it is kept on purpose)"),
    "no_gradient": ("`{where}` does not learn", "check that the output of `{where}` reaches the loss"),
    "vanishing_gradient": ("the layers near `{where}` learn orders of magnitude slower than the rest",
                           "add a residual connection or normalisation around `{where}`, or use a non-saturating "
                           "activation; check its initialisation"),
    "exploding_gradient": ("updates at `{where}` are too large: the loss spikes or becomes NaN",
                           "clip the global gradient norm (torch.nn.utils.clip_grad_norm_, value in Training "
                           "Configuration), lower the learning rate, or normalise the input of `{where}`"),
    "dead_units": ("dead units at `{where}` output zero for every sample and never recover, wasting capacity",
                   "lower the learning rate, use LeakyReLU/GELU at `{where}`, or initialise its bias slightly positive"),
    "fp16_overflow": ("in float16, values at `{where}` overflow to inf and the step is skipped or NaN",
                      "train in bf16 (--precision bf16-autocast) or keep `{where}` in float32"),
    "group_not_reached": ("the parameter group `{where}` never trains: its weights stay at their initial values",
                          "set requires_grad=True on `{where}` and give it to the optimizer, or find where its path is cut"),
    "fp16_underflow": ("in float16, small gradients at `{where}` flush to zero and stop learning",
                       "use a gradient scaler (torch.amp.GradScaler) or bf16 (--precision bf16-autocast)"),
}
# probe.py's checks -> (impact, fix)
PROBE_ADVICE = {
    "fit_one_batch": ("if the model cannot fit one batch it will not fit the dataset: training wastes its budget",
                      "check the loss wiring (which output, which labels) and the learning rate: rerun probe.py with "
                      "--lr at the suggested LR"),
    "overfit": ("if the model cannot fit one batch it will not fit the dataset: training wastes its budget",
                "check the loss wiring (which output, which labels) and the learning rate: rerun probe.py with --lr "
                "at the suggested LR"),
    "lr_range": ("training at this learning rate diverges: the loss becomes NaN or jumps within the first steps",
                 "start at the suggested LR in Training Configuration (below the measured divergence LR)"),
    "initial_loss": ("the first steps are spent undoing a confident wrong initial prediction",
                     "initialise the output layer's bias to the log class priors, or its weights smaller"),
}
# lint.py's rules -> what goes wrong in training (the rule carries its own fix)
LINT_IMPACT = "the gradient through this line is wrong or missing: the parameters before it train incorrectly"


def _source(script: str, path: str) -> str:
    return f"{script}, analysis.json `{path}`"


def _issues(evidence: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    issues: dict[int, list[dict[str, str]]] = {1: [], 2: []}
    for finding in (evidence.get("reviewer_findings", [])):
        issues[finding["priority"]].append({"title": finding["title"], "current_state": finding["current_state"],
                                            "impact": finding["impact"], "fix": finding["fix"],
                                            "source": f"reviewer ({finding['evidence']})" if finding.get("evidence") else "reviewer"})
    for finding in (_get(evidence, "grads", "findings") or []):
        priority = SEVERITY_PRIORITY.get(finding["severity"])
        if priority:
            impact, fix = GRADS_ADVICE.get(finding["kind"], ("the gradient flow at `{where}`", "see the message"))
            where = finding["where"]
            issues[priority].append({"title": f"{finding['kind'].replace('_', ' ')} at `{where}`",
                                     "current_state": finding["message"], "impact": impact.format(where=where),
                                     "fix": finding.get("fix") or fix.format(where=where),
                                     "source": _source("grads.py", "grads.findings")})
    for finding in (_get(evidence, "lint", "findings") or []):
        priority = SEVERITY_PRIORITY.get(finding["severity"])
        if priority:
            issues[priority].append({"title": f"{finding['rule']} at {finding['file']}:{finding['line']}",
                                     "current_state": f"`{finding['code']}`: {finding['message']}",
                                     "impact": LINT_IMPACT,
                                     "fix": f"line {finding['line']} of {finding['file']}: {finding.get('fix') or 'rewrite it'}",
                                     "source": _source("lint.py", "lint.findings")})
    needs_logits = loss_needs_logits(evidence)
    for finding in (_get(evidence, "contract", "findings") or []):
        priority = SEVERITY_PRIORITY.get(finding["severity"])
        if finding["check"] == "range" and finding["severity"] == "CAUTION" and not needs_logits:
            continue  # a bounded head before a loss that takes it as is (MSE, BCE): the Loss Function section says so
        if priority:
            where = finding.get("input") or finding.get("dim") or finding.get("output")
            title, impact = CONTRACT_CHECKS.get(finding["check"], (finding["check"], "the input/output contract"))
            module = f" in `{finding['module']}`" if finding.get("module") else ""
            issues[priority].append({"title": f"{title}" + (f" (`{where}`)" if where else ""),
                                     "current_state": finding["text"], "impact": impact,
                                     "fix": finding.get("fix") or f"make the model's forward{module} respect the "
                                                                   f"{title} contract measured here",
                                     "source": _source("contract.py", "contract.findings")})
    for finding in (_get(evidence, "probe", "findings") or []):
        priority = SEVERITY_PRIORITY.get(finding["severity"])
        if priority and finding["check"] in PROBE_ADVICE:
            impact, fix = PROBE_ADVICE[finding["check"]]
            issues[priority].append({"title": f"training dynamics: {finding['check'].replace('_', ' ')}",
                                     "current_state": finding["text"], "impact": impact, "fix": finding.get("fix") or fix,
                                     "source": _source("probe.py", "probe.findings")})
    memory = evidence.get("memory") or {}
    if memory.get("fits") is False:
        fix = (f"train at batch {memory['max_batch_size']} (the largest that fits) with gradient accumulation"
               if memory.get("max_batch_size") else "use a larger card (--gpu), bf16 (--precision bf16-autocast) "
               "or gradient checkpointing (torch.utils.checkpoint)")
        issues[1].append({"title": f"batch {memory.get('batch_size')} does not fit {memory.get('gpu', 'the budget')}",
                          "current_state": f"peak {render.mib(memory['peak_bytes'])} > budget {render.mib(memory.get('budget_bytes'))}",
                          "impact": "out-of-memory at the first step", "fix": fix,
                          "source": _source("memory.py", "memory.fits")})
    return {"p1": issues[1], "p2": issues[2]}


def _breakdown_text(memory: dict[str, Any]) -> str:
    full = memory.get("full_bytes", {})
    return ", ".join(f"{name.replace('_', ' ')} {render.mib(value)}"
                     + (f" ({FULL_SIZE_LABELS[name]} {render.mib(full[name])})" if name in full else "")
                     for name, value in memory.get("breakdown", {}).items())


def _performance(evidence: dict[str, Any], derived: dict[str, Any]) -> list[str]:
    """Memory, step time, epoch time and latency at the recommended batch, then at the traced batch where it differs."""
    params, memory, flops = evidence.get("params", {}), evidence.get("memory"), evidence.get("flops")
    views = batch_views(evidence)
    lines = [f"**Model Size**: {render.mib(params.get('parameter_bytes'))} of parameters "
             f"({render.count(params.get('parameter_bytes'))} bytes)"]
    for view in views:
        at = evidence.get(view["memory"]) if view["memory"] else None
        if at:
            lines.append(f"**Training step peak at {view['label']}**: {render.mib(at['peak_bytes'])}, during "
                         f"{at.get('peak_phase', 'the step')}; alive at that moment: {_breakdown_text(at)}")
        else:
            lines.append(f"**Training step peak at {view['label']}**: "
                         f"{why_not_measured(evidence, 'memory_recommended_batch' if view is not views[-1] else 'memory', 'memory')}")
    if memory:
        if "activation_bytes_per_sample" in derived:
            lines.append(f"**Activation Memory per Sample**: {render.human_bytes(derived['activation_bytes_per_sample'])} "
                         "(saved for backward at the end of the forward)")
        for view in views:
            at = evidence.get(view["memory"]) if view["memory"] else None
            if at:
                lines.append(f"**Inference peak at {view['label']}**: {render.mib(at['inference_peak_bytes'])}")
        for note in memory.get("unmodelled_buffers", []):
            lines.append(f"**[CAUTION]** not in these numbers: {note}")
        if memory.get("max_batch_size") is not None:
            lines.append(f"**Largest batch that fits {memory.get('gpu', 'the budget')}**: {memory['max_batch_size']} "
                         f"(budget {render.mib(memory.get('budget_bytes'))})")
        elif memory.get("max_batch_size_note"):
            lines.append(f"**Largest batch that fits {memory.get('gpu', 'the budget')}**: "
                         + (DATA_FIXED if evidence.get("data") else f"{NOT_MEASURED}: {memory['max_batch_size_note']}"))
    gpu = _get(flops, "gpu", "description") if flops else None
    for view in views:
        at = evidence.get(view["flops"]) if view["flops"] else None
        if at and at.get("estimated_step_seconds") is not None:
            how = (f"roofline, MFU {at.get('mfu')}" if at.get("mfu") is not None
                   else "per-kernel model: the CPU issues each op, the GPU runs it compute-, bandwidth- or floor-bound")
            lines.append(f"**Estimated training step at {view['label']}**: {render.seconds(at['estimated_step_seconds'])} "
                         f"on {gpu} ({how})")
        else:
            lines.append(f"**Estimated training step at {view['label']}**: "
                         f"{why_not_measured(evidence, 'flops_recommended_batch' if view is not views[-1] else 'flops', 'flops')}")
    if "epoch_seconds" in derived:
        lines.append(f"**Estimated Training Time at {views[0]['label']}**: {render.seconds(derived['epoch_seconds'])} "
                     f"per epoch of {render.count(evidence['samples_per_epoch'])} samples "
                     f"({render.count(derived['steps_per_epoch'])} steps) on {gpu}")
    elif not evidence.get("samples_per_epoch"):
        lines.append("**Estimated Training Time**: per epoch not measured (pass --samples-per-epoch N)")
    else:
        lines.append(f"**Estimated Training Time at {views[0]['label']}**: per epoch {NOT_MEASURED}: the step time "
                     f"at that batch is not measured")
    for view in views:
        at = evidence.get(view["flops"]) if view["flops"] else None
        if at and at.get("inference_seconds_per_batch") is not None:
            lines.append(f"**Inference Latency at {view['label']}**: {render.seconds(at['inference_seconds_per_batch'])} "
                         f"per batch on {gpu}")
    return lines


def _eval_item(evidence: dict[str, Any]) -> str:
    """model.eval() before inference, with what it switches in this model (trace.py's train_mode)."""
    modes = _get(evidence, "trace", "train_mode")
    if not modes:
        return "Call model.eval() before inference (what it switches was not measured: trace.py did not run)"
    parts = []
    if modes["dropout_modules"]:
        names = [m["module"] for m in modes["dropout_modules"]]
        parts.append(f"{len(names)} dropout module(s) ({', '.join('`' + n + '`' for n in names[:3])}"
                     f"{', ...' if len(names) > 3 else ''})")
    inner: dict[tuple[str, float], list[str]] = {}
    for m in modes["inner_dropout"]:
        inner.setdefault((m["type"], m["p"]), []).append(m["module"])
    for (kind, p), names in inner.items():
        parts.append(f"the dropout inside `{names[0]}` (nn.{kind} dropout={p:g})" if len(names) == 1 else
                     f"the dropout inside {len(names)} nn.{kind} modules ({', '.join('`' + n + '`' for n in names[:2])}, "
                     f"...; dropout={p:g})")
    for m in modes["functional_dropout"]:
        parts.append(f"{m['calls']} functional dropout call(s) in {m['class']}.forward")
    norms = []
    if modes["batchnorm_modules"]:
        names = [m["module"] for m in modes["batchnorm_modules"]]
        norms.append(f"makes {len(names)} BatchNorm module(s) ({', '.join('`' + n + '`' for n in names[:3])}"
                     f"{', ...' if len(names) > 3 else ''}) use their running statistics instead of the batch's")
    if not parts and not norms:
        return ("Call model.eval() before inference (no dropout or BatchNorm found, so it changes nothing measured "
                "here; it still matters once one is added)")
    return "Call model.eval() before inference: it " + "; it ".join(
        (["switches off " + ", ".join(parts)] if parts else []) + norms)


def _checklist(evidence: dict[str, Any]) -> list[str]:
    items = []
    kind = _get(evidence, "recommend", "architecture", "architecture")
    own_init = _get(evidence, "params", "own_initialisers", default=[])
    if kind in INIT_ADVICE and own_init:  # the seed's rule and the model disagree: both shown, the model's used
        items.append(f"Initialise weights: the model defines its own ({', '.join('`' + m + '`' for m in own_init[:3])}); "
                     f"it is kept rather than the initialisation rule ({INIT_ADVICE[kind]}), because it was written for this "
                     f"architecture (and a pretrained checkpoint replaces both)")
    elif kind in INIT_ADVICE:
        items.append(f"Initialise weights: {INIT_ADVICE[kind]}")
    items.append(_eval_item(evidence))
    clip = next((r for r in _get(evidence, "recommend", "recommendations", default=[]) if r["setting"] == "gradient_clipping"), None)
    if clip and isinstance(clip.get("value"), dict) and clip["value"].get("max_norm") is not None:
        items.append(f"Clip by global norm: torch.nn.utils.clip_grad_norm_(model.parameters(), {clip['text'].split(' ')[0]})")
    if evidence.get("grads"):
        items.append("Log the global gradient norm every step; the sampled batches gave "
                     + ", ".join(render.sci(n) for n in evidence["grads"]["global_grad_norms"] if isinstance(n, (int, float))))
    masks = [r["name"] for r in _get(evidence, "trace", "inputs", default=[]) if r["dtype"] == "bool"]
    measured_masks = _get(evidence, "contract", "masks")
    if measured_masks:
        for line in contract_view.render_lines(evidence["contract"])["masks"]:
            items.append(f"Padding measured by contract.py: {line}")
    elif masks:
        items.append(f"Validate during the first iteration that padding positions in {', '.join('`' + m + '`' for m in masks)} "
                     "do not change the output (padding must be masked in attention and in pooling)")
    for group, data in (_get(evidence, "grads", "groups") or {}).items():
        items.append(f"Check that `{group}` keeps receiving gradient after any architecture change "
                     f"({'reached' if data['reached'] else 'NOT reached'} now)")
    return items


def _scope(evidence: dict[str, Any]) -> list[str]:
    """The batch and steps each behavioural check ran with, and what the review's clock cut (report's review_budget)."""
    workload = evidence.get("review_budget")
    if not workload:
        return []
    batch = workload.get("batch_size")
    traced = workload.get("traced_batch_size")
    batch_text = (f"batch {batch}" + (f" (the traced batch is {traced})" if traced and batch != traced else "")
                  if batch else "the inputs' own batch")
    lines = [f"**Review budget**: {workload['budget_s']:g} s (`--budget-s`); {workload['reason']}"]
    if "contract" in evidence:
        lines.append(f"**Contract checks**: {batch_text}")
    if "grads" in evidence:
        lines.append(f"**Gradient sampling**: {batch_text}, {workload['grads_batches']} batches")
    if "probe" in evidence:
        steps = ((evidence.get("probe") or {}).get("lr_range") or {}).get("steps") or {}
        search = (f", LR search {steps['trials']} runs of {steps['per_trial']} steps" if steps.get("per_trial")
                  else "")
        lines.append(f"**Training probe**: {batch_text}, {workload['probe_steps']} fit-one-batch steps, "
                     f"{workload['probe_sweep_steps']} LR-range steps{search}")
    cuts = workload.get("cut_by_clock") or []
    lines.append("**Cut by the clock**: " + ("; ".join(cuts) if cuts else "nothing"))
    return lines


def learning_rate(evidence: dict[str, Any]) -> tuple[float | None, str]:
    """The one starting learning rate and where it comes from: recommend's entry (its `lr`/`lr_source` where it states
    them, else its range's start and its rule)."""
    entry = next((r for r in _get(evidence, "recommend", "recommendations", default=[])
                  if r.get("setting") == "learning_rate"), None)
    if entry is None:
        return None, why_not_measured(evidence, "recommend")
    if isinstance(entry.get("lr"), (int, float)):
        return entry["lr"], entry.get("lr_source") or f"recommend.py rule {entry.get('rule')}"
    value = entry.get("value")
    start = value.get("start", value.get("min")) if isinstance(value, dict) else value
    if not isinstance(start, (int, float)):
        return None, f"{NOT_MEASURED}: {entry.get('text') or 'recommend.py gave no learning rate'}"
    source = entry.get("lr_source") or f"recommend.py rule {entry.get('rule')}"
    return start, source


def summary(evidence: dict[str, Any], issues: dict[str, list[dict[str, str]]]) -> dict[str, Any]:
    """analysis.json's `summary`: the verdict, the Priority 1 titles and the four numbers a user acts on, at one batch."""
    view = batch_views(evidence)[0]
    memory_at = evidence.get(view["memory"]) if view["memory"] else None
    flops_at = evidence.get(view["flops"]) if view["flops"] else None
    memory = evidence.get("memory") or {}
    lr, lr_source = learning_rate(evidence)
    stability = _get(evidence, "grads", "stability")
    p1, p2 = [i["title"] for i in issues["p1"]], [i["title"] for i in issues["p2"]]
    if p1:
        verdict = f"not ready: fix {len(p1)} Priority 1 issue(s) before training"
    elif stability in (None, NOT_MEASURED):
        verdict = "no Priority 1 issue found, but gradient flow was not measured"
    else:
        verdict = f"ready to train: no Priority 1 issue; gradient flow {stability}"
    if p2:
        verdict += f"; {len(p2)} Priority 2 issue(s) to review"
    not_measured = {}
    memory_key = view["memory"] or ("memory_recommended_batch" if view["label"].startswith("the recommended") else "memory")
    flops_key = view["flops"] or ("flops_recommended_batch" if view["label"].startswith("the recommended") else "flops")
    if memory_at is None:
        not_measured["peak_bytes"] = why_not_measured(evidence, memory_key, "memory")
    if flops_at is None or flops_at.get("estimated_step_seconds") is None:
        not_measured["step_seconds"] = why_not_measured(evidence, flops_key, "flops")
    if memory.get("max_batch_size") is None:
        not_measured["max_batch_size"] = (DATA_FIXED if evidence.get("data") and memory
                                          else f"{NOT_MEASURED}: {memory['max_batch_size_note']}" if memory.get("max_batch_size_note")
                                          else why_not_measured(evidence, "memory"))
    if lr is None:
        not_measured["lr"] = lr_source
    if view["batch"] is None:
        not_measured["batch"] = f"{NOT_MEASURED}: the batch dim could not be read from the inputs"
    return {"verdict": verdict, "p1": p1, "p2": p2, "p1_count": len(p1), "p2_count": len(p2), "batch": view["batch"], "batch_label": view["label"],
            "gpu": memory.get("gpu"), "gpu_description": _get(evidence, "flops", "gpu", "description"),
            "precision": memory.get("precision"),
            "peak_bytes": memory_at.get("peak_bytes") if memory_at else None,
            "step_seconds": flops_at.get("estimated_step_seconds") if flops_at else None,
            "max_batch_size": memory.get("max_batch_size"), "lr": lr, "lr_source": lr_source if lr is not None else None,
            "not_measured": not_measured}


def _summary_view(data: dict[str, Any]) -> dict[str, Any]:
    """The summary block's lines, formatted; an unmeasured value says why."""
    missing = data["not_measured"]
    gpu = data["gpu"] or "the budget"
    return {
        "verdict": data["verdict"],
        "p1": data["p1"],
        "batch_label": data["batch_label"],
        "memory": (f"{render.mib(data['peak_bytes'])} peak per step on {gpu} ({data['precision'] or 'fp32'})"
                   if data["peak_bytes"] is not None else missing["peak_bytes"]),
        "step": (f"{render.seconds(data['step_seconds'])} on {data['gpu_description'] or gpu}"
                 if data["step_seconds"] is not None else missing["step_seconds"]),
        "gpu": gpu,
        "max_batch": str(data["max_batch_size"]) if data["max_batch_size"] is not None else missing["max_batch_size"],
        "lr": (f"{data['lr']:.3g} ({data['lr_source']})"
               if data["lr"] is not None else missing["lr"]),
    }


def _pr_lines(evidence: dict[str, Any], issues: dict[str, list[dict[str, str]]]) -> dict[str, str]:
    """pr.md's one line each for the contracts and the training dynamics, in words."""
    contract = evidence.get("contract")
    if contract:
        parts = []
        for mask in contract.get("masks", []):
            parts.append(f"padding mask `{mask.get('input')}` " + ("honoured" if mask.get("honoured") else "NOT honoured"))
        independent = contract.get("batch_independent")
        if independent is not None:
            parts.append("samples independent of their batch" if independent else "samples DEPEND on their batch")
        for perm in contract.get("permutations", []):
            parts.append(f"{str(perm.get('property', '?')).replace('_', ' ')} in `{perm.get('dim')}`")
        count = sum(1 for f in contract.get("findings", []) if f.get("severity") in SEVERITY_PRIORITY)
        parts.append(f"{count} contract issue(s)" if count else "no contract issue")
        contracts = "; ".join(parts)
    else:
        contracts = why_not_measured(evidence, "contract")
    probe = evidence.get("probe")
    parts = []
    if probe:
        fit = probe.get("overfit", {})
        verdict = {"fits": "fits one batch", "slow": "fits one batch slowly", "flat": "CANNOT fit one batch",
                   "diverges": "DIVERGES on one batch"}.get(fit.get("verdict"), f"one batch: {fit.get('verdict')}")
        parts.append(f"{verdict} at lr {fit.get('lr', 0):.3g} in {fit.get('steps')} steps")
        divergence = _get(probe, "lr_range", "divergence_lr")
        parts.append(f"loss diverges from lr {divergence:.3g}" if isinstance(divergence, (int, float))
                     else "no divergence in the LR range test")
    else:
        parts.append(why_not_measured(evidence, "probe"))
    stability = _get(evidence, "grads", "stability")
    parts.append(f"gradient flow {stability}" if stability else why_not_measured(evidence, "grads"))
    return {"contracts": contracts, "dynamics": "; ".join(parts)}


def build_view(evidence: dict[str, Any]) -> dict[str, Any]:
    evidence["derived"] = derive(evidence)
    trace = evidence.get("trace")
    issues = _issues(evidence)
    evidence["summary"] = summary(evidence, issues)
    return {
        "summary": _summary_view(evidence["summary"]),
        "pr": _pr_lines(evidence, issues),
        "model": _get(evidence, "params", "model") or evidence["target"],
        "target": evidence["target"],
        "command": evidence["command"],
        "overview": _overview(evidence, evidence["derived"]),
        "inputs": _tensor_rows(trace["inputs"], _ranges(evidence, "inputs", contract_view.input_range)) if trace else [],
        "outputs": _tensor_rows(trace["outputs"], _ranges(evidence, "outputs", contract_view.output_range)) if trace else [],
        "contracts": _contracts(evidence),
        "walkthrough": _walkthrough(trace),
        "scaling": _scaling(trace),
        "gradient": _gradient(evidence),
        "training": _training(evidence),
        "dynamics": _dynamics(evidence),
        "issues": issues,
        "loss": _loss(evidence),
        "performance": _performance(evidence, evidence["derived"]),
        "checklist": _checklist(evidence),
        "scope": _scope(evidence),
        "not_measured": [f"{name}: {reason}" for name, reason in evidence.get("not_measured", {}).items()],
    }
