"""check_grounding in context: a number is grounded only by evidence about the subject the review puts it under.

Real reviews of the bundled examples and of a Hugging Face model (each rendered once for this module);
each mix-up of issue 15 is planted one at a time, built from the evidence's own values.
"""

import json
import re

import pytest

from conftest import run_script
from model_expert import grounding, render, vocabulary
from test_report import AE, HF, ST_REVIEW


@pytest.fixture(scope="module")
def reviews(review_cache):
    """{name: (directory, analysis.md text, evidence)} for the three reviews, each rendered once per session."""
    return {name: review_cache(name, *args) for name, args in (("st", ST_REVIEW), ("ae", AE), ("hf", HF))}


def peak_line(markdown, evidence):
    """The performance line with the training peak at the traced batch (memory.peak_bytes), as rendered."""
    peak = render.mib(evidence["memory"]["peak_bytes"])
    line = next(l for l in markdown.splitlines() if l.startswith("- **Training step peak at ") and f"**: {peak}," in l)
    return line[2:line.index(",")], peak


def check(review_dir, text):
    path = review_dir / "checked.md"
    path.write_text(text)
    return grounding.check_files(str(path), [str(review_dir / "analysis.json")])


def index_of(items, **fields):
    return next(i for i, item in enumerate(items) if all(item.get(k) == v for k, v in fields.items()))


@pytest.mark.parametrize("name", ["st", "ae", "hf"])
def test_untouched_reviews_pass_with_only_the_stated_exemptions(reviews, name):
    review_dir, markdown, _ = reviews[name]
    result = check(review_dir, markdown)
    assert [(f.line_number, f.message) for f in result.ungrounded] == []
    assert set(result.exempt) <= {rule.id for rule in grounding.EXEMPTIONS}
    # every checked number was read under a subject of the vocabulary (or a verbatim quotation)
    subjects = {s.name for s in vocabulary.load().subjects} | {"quotation"}
    assert all(m["subject"] in subjects for m in result.matches), [m for m in result.matches if m["subject"] not in subjects]


def _plants(evidence, markdown):
    """(name, old text, new text, failure kind, path the value really is, path the review's subject names)."""
    memory, cluster, params = evidence["memory"], evidence["memory_cluster"], evidence["params"]
    recommendations = evidence["recommend"]["recommendations"]
    part = next(m for m in params["modules"] if m["depth"] == 1 and m["parameters"] != params["total"])
    part_path = f"params.modules[{params['modules'].index(part)}].parameters"
    # the recommendation table's own line (the summary and Training dynamics quote the rule's text too)
    start_match = re.search(r"\*\*learning rate\*\*: [^\n]*?\(start at ([0-9.e+-]+)\)", markdown)
    peak_text, peak = peak_line(markdown, evidence)
    plants = [
        ("inference peak on the training line", peak_text,
         peak_text.replace(peak, render.mib(memory['inference_peak_bytes'])), "mismatch",
         "memory.inference_peak_bytes", "memory.peak_bytes"),
        ("a module's count as the model's total", f"**Total Parameters**: {render.count(params['total'])} (",
         f"**Total Parameters**: {render.count(part['parameters'])} (", "mismatch", part_path, "params.total"),
        ("single-GPU fit as the cluster's", f"**memory fit (cluster)**: {cluster['max_batch_size']} ",
         f"**memory fit (cluster)**: {memory['max_batch_size']} ", "mismatch", "memory.max_batch_size",
         "memory_cluster.max_batch_size"),
        ("an invented prediction", "\n### Implementation Checklist",
         "\nExpect the loss to fall by 40% in the first epoch.\n\n### Implementation Checklist", "unsupported", None, None),
    ]
    if start_match:  # 3e-4 is 1.5 x the 2e-4 start: in no recommendation, wherever else it may occur
        start = start_match.group(1)
        moved = f"(start at {float(start) * 1.5:.0e}".replace("e-0", "e-") + ")"
        plants.append(("another learning rate", start_match.group(0),
                       start_match.group(0).replace(f"(start at {start})", moved), ("mismatch", "ungrounded"), None,
                       f"recommend.recommendations[{index_of(recommendations, setting='learning_rate')}].value.start"))
    per_sample = evidence["derived"].get("activation_bytes_per_sample")
    if per_sample and memory["breakdown"].get("activations", 0) >= 2**20:
        plants.append(("per-sample figure given per batch", f"activations {render.mib(memory['breakdown']['activations'])}",
                       f"activations {render.human_bytes(per_sample)}", "mismatch",
                       "derived.activation_bytes_per_sample", "memory.breakdown.activations"))
    flops_gpu, other_gpu = evidence["flops"]["gpu"]["description"], evidence["recommend"]["hardware"][1]["description"]
    latency = [line for line in markdown.splitlines() if line.startswith("- **Inference Latency at")][-1]  # traced batch
    plants.append(("a rate given for the other GPU", latency, latency.replace(flops_gpu, other_gpu), "mismatch",
                   "flops.inference_seconds_per_batch", None))
    return plants


def test_each_planted_mix_up_fails_naming_the_right_paths(reviews):
    seen = 0
    for name in ("st", "hf"):
        review_dir, markdown, evidence = reviews[name]
        for label, old, new, kind, path, expected_path in _plants(evidence, markdown):
            assert old in markdown, (name, label)
            planted = markdown.replace(old, new, 1)
            result = check(review_dir, planted)
            line_number = planted[:planted.index(new.strip())].count("\n") + 1
            flagged = [f for f in result.ungrounded if f.line_number == line_number]
            assert flagged and len(result.ungrounded) == len(flagged), (name, label, [vars(f) for f in result.ungrounded])
            finding = flagged[0]
            assert finding.kind in (kind if isinstance(kind, tuple) else (kind,)), (name, label, vars(finding))
            if path:
                assert finding.path == path and path in finding.message, (name, label, vars(finding))
            if expected_path:
                assert finding.expected_path == expected_path and expected_path in finding.message, (name, label, vars(finding))
            seen += 1
    assert seen >= 13


def test_the_issue_example_message(reviews):
    review_dir, markdown, evidence = reviews["st"]
    peak_text, peak = peak_line(markdown, evidence)
    inference = render.mib(evidence["memory"]["inference_peak_bytes"])
    label = peak_text.split("**")[1]
    result = check(review_dir, markdown.replace(peak_text, peak_text.replace(peak, inference)))
    assert [f.message for f in result.ungrounded] == [
        f"{inference} on the '{label}' line is memory.inference_peak_bytes; memory.peak_bytes is {peak}"]


def test_a_rate_for_the_other_gpu_names_both_gpus(reviews):
    review_dir, markdown, evidence = reviews["st"]
    latency = next(line for line in markdown.splitlines() if line.startswith("- **Inference Latency at the traced"))
    other = evidence["recommend"]["hardware"][1]
    result = check(review_dir, markdown.replace(latency, latency.replace(evidence["flops"]["gpu"]["description"],
                                                                         other["description"])))
    assert f"measured for {evidence['flops']['gpu']['name']}, but the line names {other['gpu']}" in result.ungrounded[0].message


FIRST_ACTIONS = """
### First actions
1. Start training at a learning rate of {start} with AdamW, warming up over {warmup} steps.
2. Use batch size {batch} on the {gpu}; the largest batch that fits is {fit} there.
3. Clip the global gradient norm at {clip}.
4. The model has {total} parameters; a training step peaks at {peak}.
"""


def test_the_agents_whole_answer_is_checked(reviews):
    review_dir, markdown, evidence = reviews["st"]
    recommendations = {(r["setting"], r["role"]): r for r in evidence["recommend"]["recommendations"]}
    values = {"start": re.search(r"\(start at (\S+)\)", markdown).group(1),
              "warmup": render.count(recommendations["warmup", None]["value"]["steps_min"]),
              "batch": recommendations["batch_size", "single_gpu"]["value"], "gpu": evidence["memory"]["gpu"],
              "fit": evidence["memory"]["max_batch_size"], "clip": recommendations["gradient_clipping", None]["value"]["max_norm"],
              "total": render.count(evidence["params"]["total"]), "peak": render.mib(evidence["memory"]["peak_bytes"])}
    honest = markdown + FIRST_ACTIONS.format(**values)
    assert check(review_dir, honest).ungrounded == []
    # the cluster's fit, said of the single GPU; the inference peak, said of the training step
    wrong = markdown + FIRST_ACTIONS.format(**{**values, "fit": evidence["memory_cluster"]["max_batch_size"],
                                               "peak": render.mib(evidence["memory"]["inference_peak_bytes"])})
    failures = check(review_dir, wrong).ungrounded
    assert [(f.kind, f.path) for f in failures] == [("mismatch", "memory_cluster.max_batch_size"),
                                                    ("mismatch", "memory.inference_peak_bytes")]


def test_a_rendered_label_without_a_vocabulary_entry_fails_loudly(reviews):
    review_dir, markdown, _ = reviews["ae"]
    section = "\n### Contracts (measured)\n- **violations**: 0\n\n| check | cases |\n|---|---|\n| shape | 0 |\n"
    result = check(review_dir, markdown + section)
    assert [(f.kind, f.subject) for f in result.ungrounded] == [("unlabelled", "violations"), ("unlabelled", "cases")]
    assert "label 'violations', which has no vocabulary entry" in result.ungrounded[0].message
    assert "table column 'cases'" in result.ungrounded[1].message
    assert "analysis.vocabulary.toml" in result.ungrounded[0].message


def test_explain_and_json_carry_subject_and_path(reviews, tmp_path):
    review_dir, markdown, evidence = reviews["st"]
    planted = tmp_path / "planted.md"
    peak_text, peak = peak_line(markdown, evidence)
    inference = render.mib(evidence["memory"]["inference_peak_bytes"])
    planted.write_text(markdown.replace(peak_text, peak_text.replace(peak, inference)))
    explained = run_script("check_grounding", planted, review_dir / "analysis.json", "--explain")
    assert explained.returncode == 1
    line = planted.read_text()[:planted.read_text().index(peak_text.replace(peak, inference))].count("\n") + 1
    assert f"{planted}:{line}: {inference} [training step peak] MISMATCH: " in explained.stdout
    total_line = markdown[:markdown.index("**Total Parameters**")].count("\n") + 1
    assert f"{planted}:{total_line}: {render.count(evidence['params']['total'])} [total parameters] <- params.total" in explained.stdout
    as_json = json.loads(run_script("check_grounding", planted, review_dir / "analysis.json", "--json").stdout)
    assert as_json["failures_by_kind"]["mismatch"] == 1
    (failure,) = as_json["ungrounded"]
    assert (failure["subject"], failure["path"], failure["expected_path"]) == (
        "training step peak", "memory.inference_peak_bytes", "memory.peak_bytes")
    grounded = {(m["line_number"], m["number"]): m for m in as_json["grounded_numbers"]}
    assert grounded[total_line, render.count(evidence["params"]["total"])]["evidence_path"] == "params.total"
    assert len(as_json["grounded_numbers"]) == as_json["grounded"] == as_json["numbers_checked"] - 1


def test_vocabulary_selectors_labels_and_prose():
    data = {"recommend": {"recommendations": [{"setting": "memory_fit", "role": "single_gpu", "value": 7},
                                              {"setting": "memory_fit", "role": "cluster", "value": 9}]}}
    assert vocabulary.resolve("recommend.recommendations[setting=memory_fit,role=cluster].value", data) == \
        ["recommend.recommendations[1].value"]
    assert vocabulary.resolve("recommend.recommendations[setting=lr]", data) == []
    regex = vocabulary.path_regex(["memory.breakdown", "trace.calls[*].index"])
    assert regex.match("memory.breakdown.activations") and regex.match("trace.calls[12].index")
    assert not regex.match("memory.breakdown_detail") and not regex.match("trace.calls[1].inputs[0].index")
    words = vocabulary.load()
    assert words.for_label("Largest batch that fits a100-40gb").name == "largest batch that fits"
    assert words.for_label(" inference PEAK: ").name == "inference peak"
    assert words.for_label("Velocity") is None
    groups = words.named_near("betas (0.9, 0.999), warmup 5–10 %", len("betas (0.9, "))
    assert [s.name for s in groups[0]] == ["adam hyperparameters"] and [s.name for s in groups[1]] == ["warmup"]


def test_context_label_block_table_fence_and_prose():
    from model_expert import review_context
    text = ("### Memory\n"                                      # 1 heading: a block for what follows
            "- **Inference peak**: 28.5 MiB\n"                  # 2 own label
            "**Inputs**:\n"                                     # 3 label-only line: a block
            "- `x`: shape `[8, 64]`\n"                          # 4 under Inputs
            "| # | outputs |\n|---|---|\n| 3 | [8, 32] |\n"      # 5-7 table: each cell under its column
            "```mermaid\nbar [1.5]\n```\n"                      # 8-10 a fence is a block
            "\nThen 5 more; at a learning rate of 2e-4\n")      # 12 under the heading again; clause by clause
    infos = review_context.line_infos(text)
    lines = text.splitlines()

    def read(line_number, number):
        line = lines[line_number - 1]
        start = line.index(number)
        context = review_context.context_for(infos[line_number - 1], line, start, start + len(number))
        return context.label, context.source
    assert read(2, "28.5") == ("Inference peak", "label")
    assert read(4, "64") == ("Inputs", "block")
    assert read(7, "3") == ("#", "column") and read(7, "32") == ("outputs", "column")
    assert read(9, "1.5") == ("```mermaid", "fence")
    assert read(12, "5") == ("Memory", "heading")
    line = lines[11]
    context = review_context.context_for(infos[11], line, line.index("2e-4"), line.index("2e-4") + 4)
    assert context.clause == " at a learning rate of 2e-4"  # the clause after ';'


def test_bad_vocabulary_is_one_line_exit_2(tmp_path, reviews):
    review_dir, _, _ = reviews["ae"]
    broken = tmp_path / "v.toml"
    broken.write_text("[[subject]]\nlabel = 'typo'\n")
    for vocabulary_file in (broken, tmp_path / "missing.toml"):
        result = run_script("check_grounding", review_dir / "analysis.md", review_dir / "analysis.json",
                            "--vocabulary", vocabulary_file)
        assert result.returncode == 2 and result.stdout == "" and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_gpu_names_in_prose_are_names_and_pick_the_gpus_evidence():
    data = {"memory": {"gpu": "rtx3060-12gb", "max_batch_size": 1747},
            "memory_cluster": {"gpu": "a100-40gb", "max_batch_size": 6083},
            "recommend": {"hardware": [{"gpu": "rtx3060-12gb", "description": "NVIDIA GeForce RTX 3060 12 GB"},
                                       {"gpu": "a100-40gb", "description": "NVIDIA A100 SXM4 40 GB"}]}}
    evidence = grounding.Evidence(grounding.evidence_entries(data), data=data)
    assert "RTX 3060" in grounding.gpu_name_variants("NVIDIA GeForce RTX 3060 12 GB")
    assert "12 GB" not in grounding.gpu_name_variants("NVIDIA GeForce RTX 3060 12 GB")  # a size, said alone, is a claim
    words = vocabulary.load()
    right = grounding.check_text("On the RTX 3060 the largest batch that fits is 1747; on the A100 the largest batch is 6083.",
                                 evidence, words)
    assert right.ungrounded == [] and right.exempt == {"gpu-name": 1, "name": 1}
    wrong = grounding.check_text("On the RTX 3060 the largest batch that fits is 6083.", evidence, words)
    assert [(f.kind, f.path, f.expected_path) for f in wrong.ungrounded] == [
        ("mismatch", "memory_cluster.max_batch_size", "memory.max_batch_size")]
    assert "measured for a100-40gb, but the line names rtx3060-12gb" in wrong.ungrounded[0].message


def test_qualifiers_next_to_a_number_must_match_the_evidence(reviews):
    """Batch, precision and world size written next to a number are checked; a swap inside one labelled line is
    caught; true claims naming the batch or the method that measured them pass."""
    review_dir, markdown, evidence = reviews["st"]
    memory, at_rec = evidence["memory"], evidence["memory_recommended_batch"]
    traced, recommended = memory["batch_size"], at_rec["batch_size"]
    assert (traced, recommended) == (8, 32)
    peak, rec_peak = render.mib(memory["peak_bytes"]), render.mib(at_rec["peak_bytes"])
    rec_step = render.seconds(evidence["flops_recommended_batch"]["estimated_step_seconds"])
    breakdown = memory["breakdown"]
    params, grads = render.mib(breakdown["params"]), render.mib(breakdown["grads"])
    assert params != grads
    traced_line = next(l for l in markdown.splitlines() if l.startswith(f"- **Training step peak at the traced batch {traced}**"))
    swapped = traced_line.replace(f"params {params}", "params PARAMS").replace(f"grads {grads}", f"grads {params}")
    swapped = swapped.replace("params PARAMS", f"params {grads}")
    summary_line = next(l for l in markdown.splitlines() if l.startswith("- **Training memory at the recommended batch"))
    heading = "\n### First actions\n"
    planted = {
        "another batch, in a label": (markdown.replace(f"batch {recommended}**: {rec_peak}", f"batch {recommended}**: {peak}"),
                                      f"measured at batch {traced}, but the text says batch {recommended}"),
        "another batch, in prose": (markdown + heading + f"Peak memory at batch {recommended} is {peak}.\n",
                                    f"measured at batch {traced}, but the text says batch {recommended}"),
        "another precision": (markdown.replace(summary_line, summary_line.replace("(fp32)", "(bf16)")),
                              "measured at precision fp32, but the text says bf16"),
        "another world size": (markdown + heading + f"On 4 GPUs the training step peaks at {peak} per GPU.\n",
                               "measured at world size 1, but the text says 4 GPUs"),
        "two values swapped on one line": (markdown.replace(traced_line, swapped), "memory.breakdown."),
    }
    for name, (text, message) in planted.items():
        failures = check(review_dir, text).ungrounded
        assert failures and all(f.kind == "mismatch" for f in failures), (name, [vars(f) for f in failures])
        assert any(message in f.message for f in failures), (name, [f.message for f in failures])
    # the batch mix-up names both: what the text says and where the value at that batch is
    failures = check(review_dir, planted["another batch, in prose"][0]).ungrounded
    assert f"at batch {recommended}, memory_recommended_batch.peak_bytes is {rec_peak}" in failures[0].message
    suggested = evidence["probe"]["lr_range"]["suggested_lr"]
    true = (markdown + heading + f"At the recommended batch {recommended} a training step peaks at {rec_peak} and takes "
            f"{rec_step}; at the traced batch {traced} the training step peaks at {peak}.\n"
            f"Start below {suggested:.3g}, which the LR range test suggested.\n")
    assert [f.message for f in check(review_dir, true).ungrounded] == []
