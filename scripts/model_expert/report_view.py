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
    # the epoch at the recommended batch where report.py measured it, else at the traced batch
    epoch_flops = "flops_recommended_batch" if "flops_recommended_batch" in evidence else "flops"
    step_seconds = _get(evidence, epoch_flops, "estimated_step_seconds")
    flops_batch = _get(evidence, epoch_flops, "batch_size")
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
    by_op = _get(evidence, "flops", "flops_by_op") or {}
    if by_op:
        derived["training_flops_by_op"] = {op: v["forward_flops"] + v["backward_flops"] for op, v in by_op.items()}
    return derived


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
        memory_line = (f"{render.mib(memory['peak_bytes'])} peak per training step at batch {memory.get('batch_size', '?')} "
                       f"({memory.get('precision', 'fp32')}, {memory.get('optimizer', 'adamw')}, "
                       f"{memory.get('target_device', 'cuda')} rules{' for ' + memory['rules_gpu'] if memory.get('rules_gpu') else ''}); "
                       f"{render.mib(memory['inference_peak_bytes'])} for inference")
    else:
        memory_line = NOT_MEASURED
    if flops:
        complexity = (f"{render.flops(flops['forward_flops'])} forward + {render.flops(flops['backward_flops'])} backward "
                      f"per batch (counted with the {flops.get('attention_kernels_of') or flops.get('device')} target's kernels); "
                      f"matmul FLOPs by op: "
                      + ", ".join(f"{op} {render.flops(total)}"
                                  for op, total in sorted(derived.get("training_flops_by_op", {}).items())))
    else:
        complexity = NOT_MEASURED
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
        sections.setdefault(heading, []).append({"label": label, "text": item["text"],
                                                 "justification": item.get("justification", ""),
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


def _issues(evidence: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
    issues: dict[int, list[dict[str, str]]] = {1: [], 2: []}
    for finding in evidence.get("reviewer_findings", []):
        issues[finding["priority"]].append({"title": finding["title"], "current_state": finding["current_state"],
                                            "impact": finding["impact"], "fix": finding["fix"],
                                            "source": f"reviewer ({finding['evidence']})" if finding.get("evidence") else "reviewer"})
    for finding in _get(evidence, "grads", "findings") or []:
        priority = SEVERITY_PRIORITY.get(finding["severity"])
        if priority:
            issues[priority].append({"title": f"{finding['kind'].replace('_', ' ')} at `{finding['where']}`",
                                     "current_state": finding["message"], "impact": "gradient flow",
                                     "fix": finding.get("fix") or "see grads.py's finding", "source": "grads.py"})
    for finding in _get(evidence, "lint", "findings") or []:
        priority = SEVERITY_PRIORITY.get(finding["severity"])
        if priority:
            issues[priority].append({"title": f"{finding['rule']} at {finding['file']}:{finding['line']}",
                                     "current_state": f"`{finding['code']}`: {finding['message']}",
                                     "impact": "the autograd graph", "fix": finding.get("fix", ""), "source": "lint.py"})
    needs_logits = loss_needs_logits(evidence)
    for finding in _get(evidence, "contract", "findings") or []:
        priority = SEVERITY_PRIORITY.get(finding["severity"])
        if finding["check"] == "range" and finding["severity"] == "CAUTION" and not needs_logits:
            continue  # a bounded head before a loss that takes it as is (MSE, BCE): the Loss Function section says so
        if priority:
            where = finding.get("input") or finding.get("dim") or finding.get("output")
            title, impact = CONTRACT_CHECKS.get(finding["check"], (finding["check"], "the input/output contract"))
            issues[priority].append({"title": f"{title}" + (f" (`{where}`)" if where else ""),
                                     "current_state": finding["text"], "impact": impact,
                                     "fix": finding.get("fix") or "see contract.py's finding", "source": "contract.py"})
    for finding in _get(evidence, "probe", "findings") or []:
        priority = SEVERITY_PRIORITY.get(finding["severity"])
        if priority and finding["check"] in ("fit_one_batch", "lr_range", "initial_loss"):
            impact = {"fit_one_batch": "training does not learn or diverges (measured on one batch)",
                      "lr_range": "training breaks down at this LR", "initial_loss": "a poor start"}[finding["check"]]
            issues[priority].append({"title": f"training dynamics: {finding['check'].replace('_', ' ')}",
                                     "current_state": finding["text"], "impact": impact,
                                     "fix": "see probe.py's finding", "source": "probe.py"})
    memory = evidence.get("memory") or {}
    if memory.get("fits") is False:
        issues[1].append({"title": f"batch {memory.get('batch_size')} does not fit {memory.get('gpu', 'the budget')}",
                          "current_state": f"peak {render.mib(memory['peak_bytes'])} > budget {render.mib(memory.get('budget_bytes'))}",
                          "impact": "out-of-memory at the first step",
                          "fix": f"largest batch that fits: {memory.get('max_batch_size')}", "source": "memory.py"})
    return {"p1": issues[1], "p2": issues[2]}


def _performance(evidence: dict[str, Any], derived: dict[str, Any]) -> list[str]:
    params, memory, flops = evidence.get("params", {}), evidence.get("memory"), evidence.get("flops")
    lines = [f"**Model Size**: {render.mib(params.get('parameter_bytes'))} of parameters "
             f"({render.count(params.get('parameter_bytes'))} bytes)"]
    if memory:
        breakdown = memory.get("breakdown", {})
        full = memory.get("full_bytes", {})
        lines.append(f"**Training step peak**: {render.mib(memory['peak_bytes'])} at batch {memory.get('batch_size')}, "
                     f"during {memory.get('peak_phase', 'the step')}; alive at that moment: "
                     + ", ".join(f"{name.replace('_', ' ')} {render.mib(value)}"
                                 + (f" ({FULL_SIZE_LABELS[name]} {render.mib(full[name])})" if name in full else "")
                                 for name, value in breakdown.items()))
        if "activation_bytes_per_sample" in derived:
            lines.append(f"**Activation Memory per Sample**: {render.human_bytes(derived['activation_bytes_per_sample'])} "
                         "(saved for backward at the end of the forward)")
        lines.append(f"**Inference peak**: {render.mib(memory['inference_peak_bytes'])}")
        for note in memory.get("unmodelled_buffers", []):
            lines.append(f"**[CAUTION]** not in these numbers: {note}")
        if memory.get("max_batch_size") is not None:
            lines.append(f"**Largest batch that fits {memory.get('gpu', 'the budget')}**: {memory['max_batch_size']} "
                         f"(budget {render.mib(memory.get('budget_bytes'))})")
    else:
        lines.append(f"**Training memory**: {NOT_MEASURED} ({evidence.get('not_measured', {}).get('memory', '')})")
    gpu = _get(flops, "gpu", "description") if flops else None
    if flops and flops.get("estimated_step_seconds") is not None:
        how = (f"roofline, MFU {flops.get('mfu')}" if flops.get("mfu") is not None
               else "per-kernel model: the CPU issues each op, the GPU runs it compute-, bandwidth- or floor-bound")
        lines.append(f"**Estimated training step**: {render.seconds(flops['estimated_step_seconds'])} on {gpu} ({how})")
    else:
        lines.append(f"**Estimated training step**: {NOT_MEASURED}")
    if "epoch_seconds" in derived:
        which = ("the recommended batch" if "flops_recommended_batch" in evidence else
                 "the traced batch" + (f"; at the recommended batch: {evidence['not_measured']['flops_recommended_batch']}"
                                       if "flops_recommended_batch" in evidence.get("not_measured", {}) else ""))
        lines.append(f"**Estimated Training Time**: {render.seconds(derived['epoch_seconds'])} per epoch of "
                     f"{render.count(evidence['samples_per_epoch'])} samples ({render.count(derived['steps_per_epoch'])} "
                     f"steps at batch {derived['epoch_batch_size']}, {which}) on {gpu}")
    else:
        lines.append("**Estimated Training Time**: per epoch not measured (pass --samples-per-epoch N)")
    if flops and flops.get("inference_seconds_per_batch") is not None:
        lines.append(f"**Inference Latency**: {render.seconds(flops['inference_seconds_per_batch'])} per batch of "
                     f"{flops.get('batch_size')} on {gpu}")
    return lines


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
    dropouts = _get(evidence, "derived", "dropout_call_count", default=0)
    items.append(f"Call model.eval() before inference ({dropouts} dropout module call(s) in the traced forward)")
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


def build_view(evidence: dict[str, Any]) -> dict[str, Any]:
    evidence["derived"] = derive(evidence)
    trace = evidence.get("trace")
    return {
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
        "issues": _issues(evidence),
        "loss": _loss(evidence),
        "performance": _performance(evidence, evidence["derived"]),
        "checklist": _checklist(evidence),
        "scope": _scope(evidence),
        "not_measured": [f"{name}: {reason}" for name, reason in evidence.get("not_measured", {}).items()],
    }
