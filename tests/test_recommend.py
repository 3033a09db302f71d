"""recommend: the seed's rules as one table, applied to measured evidence; SLURM launch script."""

import importlib.machinery
import json
import os
import subprocess
import sys
import types

import pytest
import torch
from torch import nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))

from model_expert import cli, recommend as rec  # noqa: E402
from model_expert.errors import UserError  # noqa: E402
from model_expert.gpus import find_gpu  # noqa: E402
from model_expert.target import import_location  # noqa: E402

# recommend's per-sample budget for a card: its memory less the CUDA context and the 5 % allocator margin.
# RTX 3060: 12,627,203,850 - 524,288,000 - 631,360,192 = 11,471,555,658
RTX3060 = find_gpu("rtx3060-12gb").usable_memory_bytes()
# A100 40 GB, the default cluster card: 42,294,690,447 - 524,288,000 - 2,114,734,522 = 39,655,667,925
A100 = find_gpu("a100-40gb").usable_memory_bytes()
SEED_FILE = os.environ.get("MODEL_EXPERT_SEED", "/work/shared/seeds/000_b9b3c2bc5218dda8.txt")

TRANSFORMER = {"architecture": "transformer", "loss_kind": None, "evidence": []}
AUTOENCODER = {"architecture": "autoencoder", "loss_kind": None, "evidence": []}
PARAMS_13M = {"schema": "model-expert/params/1", "model": "SimilarityTransformer", "total": 13_529_600,
              "trainable": 13_529_600}
# 13,529,600 fp32 params: 54,118,400 B each for params and grads, AdamW state 2x; activations 400 MB at batch 8.
MEMORY_3060 = {"schema": "model-expert/memory/1", "budget_bytes": RTX3060, "fits": True, "max_batch_size": 24,
               "batch_size": 8, "peak_bytes": 616_473_600,
               "breakdown": {"params": 54_118_400, "grads": 54_118_400, "optimizer_state": 108_236_800,
                             "activations": 400_000_000, "temporaries": 0}}
GRADS = {"schema": "model-expert/grads/1", "global_grad_norms": [2.0, 3.0, 0.5, 4.0], "suggested_clip_norm": 3.5,
         "stability": "CAUTION", "findings": []}


def _recommend(evidence, **options):
    return rec.recommend(evidence, rec.Options(**options))


def _value(result, setting, role=None):
    return rec.find(result, setting, role)["value"]


# ---- the rule table -----------------------------------------------------------------------------

def test_rule_table_is_well_formed():
    ids = [rule.id for rule in rec.RULES]
    assert len(ids) == len(set(ids))
    for setting in rec.MODEL_SETTINGS + rec.ROLE_SETTINGS:
        rows = [rule for rule in rec.RULES if rule.setting == setting]
        assert rows, setting
        assert rows[-1].when is rec._always, setting  # the last row always applies: no setting left undecided
        assert all(rule.quote or rule.note for rule in rows)


def test_quoted_seed_text_is_in_the_seed():
    if not os.path.isfile(SEED_FILE):
        pytest.skip(f"seed text not at {SEED_FILE} (set MODEL_EXPERT_SEED)")
    seed = open(SEED_FILE, encoding="utf-8").read()
    quoted = [rule.quote for rule in rec.RULES if rule.quote]
    assert len(quoted) >= 18
    for text in quoted:
        assert text in seed, text


# ---- the pure function ----------------------------------------------------------------------------

def test_transformer_with_measured_memory_and_grads():
    result = _recommend({"params": PARAMS_13M, "architecture": TRANSFORMER, "memory": [MEMORY_3060], "grads": GRADS},
                        steps=20_000, global_batch=256)
    assert _value(result, "optimizer") == {"name": "AdamW", "weight_decay": 0.01}
    assert _value(result, "adam_hyperparameters") == {"betas": [0.9, 0.999], "eps": 1e-8}
    learning_rate = rec.find(result, "learning_rate")
    assert learning_rate["rule"] == "lr.similarity_transformer" and learning_rate["value"]["min"] == 2e-4
    assert learning_rate["also_applicable"] == ["lr.transformer_under_100m"]
    assert learning_rate["measured"]["total_parameters"] == 13_529_600
    assert _value(result, "scheduler")["name"] == "LinearWarmupCosineAnnealingLR"
    # 5 % and 10 % of 20,000 steps
    assert _value(result, "warmup")["steps_min"] == 1000 and _value(result, "warmup")["steps_max"] == 2000
    # single GPU: memory.py measured 24 for the 3060's budget; inside the seed's 16-32, so 24.
    assert _value(result, "batch_size", "single_gpu") == 24
    assert _value(result, "grad_accum", "single_gpu") == 11  # ceil(256 / 24) = 11 -> 264
    # cluster (A100 40 GB): (39,528,986,837 - 216,473,600) // (400,000,000 / 8) = 786 fit; clamped to the seed's 32.
    fit = rec.find(result, "memory_fit", "cluster")
    # card - 650,969,088 B CUDA context (measured, H200 torch 2.11) - 5 % of the card
    assert RTX3060 == 12_627_203_850 - 650_969_088 - 631_360_192 == 11_344_874_570
    assert A100 == 42_294_690_447 - 650_969_088 - 2_114_734_522 == 39_528_986_837
    assert fit["value"] == 786 and fit["measured"]["per_sample_bytes"] == 50_000_000
    assert _value(result, "batch_size", "cluster") == 32
    assert _value(result, "grad_accum", "cluster") == 2  # ceil(256 / (32 x 4)) = 2
    cluster = next(h for h in result["hardware"] if h["role"] == "cluster")
    assert (cluster["gpus"], cluster["global_batch"]) == (4, 256)
    clip = rec.find(result, "gradient_clipping")
    assert clip["value"]["max_norm"] == 1.0 and clip["value"]["measured_suggestion"] == 3.5
    assert clip["value"]["used"] == "rule"
    assert clip["measured"]["median_global_grad_norm"] == 2.5  # median of 0.5, 2, 3, 4
    assert clip["measured"]["fraction_of_steps_clipped"] == 0.75  # 2, 3, 4 exceed 1.0
    assert result["not_measured"] == []
    for entry in result["recommendations"]:
        assert entry["rule"] and entry["rule_text"] and entry["justification"], entry["setting"]


def test_autoencoder_memory_constrained_and_l1_clipping():
    memory = {"schema": "model-expert/memory/1", "budget_bytes": RTX3060, "max_batch_size": 40}
    evidence = {"model": "ModelAutoEncoder", "params": {"total": 2_000_000, "trainable": 2_000_000},
                "architecture": AUTOENCODER, "memory": memory, "grads": {"suggested_clip_norm": 0.3}}
    result = _recommend(evidence, l1_regularization=True)
    assert _value(result, "optimizer") == {"name": "Adam", "weight_decay": 1e-4}
    assert (_value(result, "learning_rate")["min"], _value(result, "learning_rate")["max"]) == (1e-3, 5e-3)
    assert _value(result, "scheduler")["name"] == "ReduceLROnPlateau"  # no --steps
    assert _value(result, "scheduler")["factor"] == 0.5 and _value(result, "scheduler")["min_lr"] == 1e-6
    # 40 fit, below the seed's 64: use 40 and accumulate ceil(64 / 40) = 2 steps.
    assert _value(result, "batch_size", "single_gpu") == 40
    accumulation = rec.find(result, "grad_accum", "single_gpu")
    assert accumulation["rule"] == "accum.memory_constrained" and accumulation["value"] == 2
    # cluster: this memory file has neither the A100's budget nor a breakdown -> not measured, seed's lower end.
    batch = rec.find(result, "batch_size", "cluster")
    assert batch["value"] == 64 and "not measured" in batch["text"]
    assert _value(result, "grad_accum", "cluster") == 1  # 64 x 4 GPUs >= 64
    # measured suggestion 0.3 clamped into the seed's 0.5-1.0
    assert _value(result, "gradient_clipping")["max_norm"] == 0.5
    evidence["grads"] = {"suggested_clip_norm": 0.7}
    assert _value(_recommend(evidence, l1_regularization=True), "gradient_clipping")["max_norm"] == 0.7
    # without L1 the seed has no autoencoder clipping rule: the measured suggestion, marked outside
    clip = rec.find(_recommend(evidence), "gradient_clipping")
    assert clip["rule"] == "clip.measured" and clip["value"]["max_norm"] == 0.7 and "outside" in clip["text"]


def test_outside_the_seed_ranges_gives_no_number():
    result = _recommend({"model": "BigLM", "params": {"total": 150_000_000, "trainable": 150_000_000},
                         "architecture": TRANSFORMER})
    learning_rate = rec.find(result, "learning_rate")
    assert learning_rate["value"] is None and learning_rate["rule"] == "lr.outside"
    assert learning_rate["text"] == "outside the written rules"
    assert "150,000,000" in learning_rate["justification"]


def test_nothing_measured_is_said_and_defaults_are_the_seeds():
    result = _recommend({"model": "Tiny", "params": {"total": 1000, "trainable": 1000}, "architecture": TRANSFORMER})
    assert set(result["not_measured"]) == {"memory", "grads"}
    batch = rec.find(result, "batch_size", "single_gpu")
    assert batch["value"] == 16 and "not measured" in batch["text"]
    clip = rec.find(result, "gradient_clipping")
    assert clip["value"]["max_norm"] == 1.0 and clip["value"]["measured_suggestion"] is None
    assert "not measured" in clip["text"]
    warmup = rec.find(result, "warmup")
    assert warmup["rule"] == "warmup.transformer_no_steps" and "--steps not given" in warmup["text"]


def test_unknown_kind_and_ranking_composition():
    mlp = _recommend({"model": "MLP", "params": {"total": 1000}, "memory": MEMORY_3060})
    assert _value(mlp, "optimizer") is None and rec.find(mlp, "optimizer")["text"] == "outside the written rules"
    # no seed range for this kind: the memory limit (24) is reported as a ceiling, no batch is recommended
    batch = rec.find(mlp, "batch_size", "single_gpu")
    assert batch["value"] is None and batch["measured"]["max_batch_that_fits"] == 24
    assert batch["text"].startswith("outside the written rules") and "24 is the memory ceiling" in batch["text"]
    ranking_only = _recommend({"model": "MLP", "params": {"total": 1000},
                               "architecture": {"architecture": None, "loss_kind": "ranking", "evidence": []}})
    assert rec.find(ranking_only, "optimizer")["rule"] == "optimizer.ranking"
    both = _recommend({"model": "X", "params": {"total": 1000},
                       "architecture": {"architecture": "transformer", "loss_kind": "ranking", "evidence": []}})
    optimizer = rec.find(both, "optimizer")
    assert optimizer["rule"] == "optimizer.transformer" and optimizer["also_applicable"] == ["optimizer.ranking"]


def test_batch_one_does_not_fit():
    memory = {"budget_bytes": RTX3060, "max_batch_size": 0}
    result = _recommend({"params": {"total": 10}, "architecture": TRANSFORMER, "memory": memory})
    batch = rec.find(result, "batch_size", "single_gpu")
    assert batch["value"] is None and batch["text"].startswith("does not fit")
    assert _value(result, "grad_accum", "single_gpu") is None


def test_kind_override_and_conflict():
    result = _recommend({"params": {"total": 1000}}, kinds=["autoencoder"])
    assert result["architecture"]["architecture"] == "autoencoder"
    with pytest.raises(UserError, match="two architectures"):
        _recommend({"params": {"total": 1000}}, kinds=["autoencoder", "transformer"])


# ---- kind detection on real modules ----------------------------------------------------------------

class TinyAutoEncoder(nn.Module):
    def __init__(self, out=16):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(16, 4), nn.ReLU())
        self.decoder = nn.Linear(4, out)

    def forward(self, x):
        return self.decoder(self.encoder(x))


def _forward(model, x):
    return lambda: (rec._tensor_shapes(x), rec._tensor_shapes(model(x)))


def test_detect_autoencoder_transformer_and_ranking():
    x = torch.randn(2, 16)
    auto = TinyAutoEncoder()
    assert rec.detect_kind(auto, None, _forward(auto, x))["architecture"] == "autoencoder"
    not_auto = TinyAutoEncoder(out=3)  # encoder/decoder, but the output is not the input's shape
    assert rec.detect_kind(not_auto, None, _forward(not_auto, x))["architecture"] is None
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
    detected = rec.detect_kind(nn.TransformerEncoder(layer, 1), "examples/ranking_loss.py:ranking_loss")
    assert (detected["architecture"], detected["loss_kind"]) == ("transformer", "ranking")
    assert [e["rule"] for e in detected["evidence"]] == ["kind.transformer", "kind.ranking"]
    assert rec.detect_kind(nn.Linear(2, 2), "losses.py:mse")["loss_kind"] is None


def test_detect_hugging_face_attention_by_class_name():
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    detected = rec.detect_kind(model)
    assert detected["architecture"] == "transformer" and "GPT2Attention" in detected["evidence"][0]["matched"]


# ---- SLURM --------------------------------------------------------------------------------------------

def test_slurm_script_is_valid_bash_with_the_numbers(tmp_path):
    result = _recommend({"model": "SimilarityTransformer", "params": PARAMS_13M, "architecture": TRANSFORMER,
                         "memory": [MEMORY_3060]}, global_batch=512, nodes=2, gpus_per_node=4)
    context = rec.slurm_context(result, "simtx", "02:00:00", 32, "gpu", "train.py")
    script = rec.render_slurm(context)
    path = tmp_path / "run.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    lines = [line.strip() for line in script.splitlines()]
    for expected in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=1",
                     "#SBATCH --cpus-per-task=32", "#SBATCH --time=02:00:00", "#SBATCH --job-name=simtx",
                     "#SBATCH --partition=gpu", "--nnodes=2 \\", "--nproc_per_node=4 \\", "--rdzv_backend=c10d \\",
                     '--rdzv_endpoint="${head_node}:29500" \\',
                     "--batch-size 32 \\", "--grad-accum 2 \\", "--lr 2e-4"):  # ceil(512 / (32 x 8)) = 2
        assert expected in lines, expected


def test_slurm_cpu_only_drops_the_gpu_directives_and_account_is_written():
    result = _recommend({"model": "SimilarityTransformer", "params": PARAMS_13M, "architecture": TRANSFORMER,
                         "memory": [MEMORY_3060]}, global_batch=512, nodes=1, gpus_per_node=2)
    gpu = rec.render_slurm(rec.slurm_context(result, "simtx", "00:10:00", 2, "gpu", "examples/train.py", "abc123-gpu"))
    cpu = rec.render_slurm(rec.slurm_context(result, "simtx", "00:10:00", 2, None, "examples/train.py", None,
                                             cpu_only=True))
    assert "#SBATCH --account=abc123-gpu" in gpu.splitlines() and "#SBATCH --gpus-per-node=2" in gpu.splitlines()
    assert "--gpus-per-node" not in cpu and "--account" not in cpu and "--partition" not in cpu
    assert "    --nproc_per_node=2 \\" in cpu.splitlines()  # the ranks stay: 2 per node, on CPUs
    assert "export OMP_NUM_THREADS=$(( SLURM_CPUS_PER_TASK / 2 ))" in cpu.splitlines()


def test_slurm_without_a_batch_is_refused():
    result = _recommend({"params": {"total": 10}})  # unknown kind, no memory: no batch
    with pytest.raises(UserError, match="no per-GPU batch"):
        rec.slurm_context(result, "x", "01:00:00", 8, None, "train.py")


# ---- the CLI ------------------------------------------------------------------------------------------

MODELS = '''
import torch
from torch import nn

class SimilarityTransformer(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, 2, 32, batch_first=True), 1)
        self.head = nn.Linear(d, 1)

    def forward(self, x):
        return self.head(self.encoder(x)).squeeze(-1)

def example_inputs(batch_size=2):
    return torch.randn(batch_size, 5, 16)

instance = SimilarityTransformer()
'''


@pytest.fixture()
def files(tmp_path):
    (tmp_path / "models.py").write_text(MODELS)
    (tmp_path / "memory.json").write_text(json.dumps(MEMORY_3060))
    (tmp_path / "grads.json").write_text(json.dumps(GRADS))
    return tmp_path


def _run(*args):
    return subprocess.run([sys.executable, "scripts/recommend.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_cli_json_and_slurm(files):
    out = files / "launch.sh"
    done = _run(f"{files}/models.py:SimilarityTransformer", "--memory-json", str(files / "memory.json"),
                "--grads-json", str(files / "grads.json"), "--steps", "1000", "--global-batch", "128",
                "--slurm-out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["schema"] == "model-expert/recommend/1"
    assert data["architecture"]["architecture"] == "transformer"
    # 16-dim layer: in_proj 3*16*16+48, out_proj 16*16+16, two FFN 16*32+32 and 32*16+16, two LayerNorms 2*(2*16),
    # head 16+1 = 816 + 272 + 544 + 528 + 64 + 17 = 2,241
    assert data["measured"]["total_parameters"] == 2241
    assert data["evidence_sources"]["memory"].startswith("--memory-json")
    assert _value(data, "batch_size", "single_gpu") == 24
    assert _value(data, "grad_accum", "cluster") == 1  # ceil(128 / (32 x 4)) = 1
    assert _value(data, "warmup")["steps_min"] == 50  # 5 % of 1000
    assert subprocess.run(["bash", "-n", str(out)]).returncode == 0
    assert "--batch-size 32 \\" in out.read_text() and data["slurm"]["path"] == str(out)


@pytest.mark.parametrize("extra, message", [
    (["--kind", "mlp"], "unknown --kind 'mlp'"),
    (["--cluster-gpu", "tpu"], "unknown --cluster-gpu 'tpu'"),
    (["--steps", "0"], "--steps must be a positive whole number"),
    (["--memory-json", "GRADS"], "expected the output of memory.py --json"),
    (["--grads-json", "missing.json"], "does not exist"),
])
def test_cli_bad_input_one_line_exit_2_nothing_written(files, extra, message):
    extra = [str(files / "grads.json") if e == "GRADS" else e for e in extra]
    out = files / "never.sh"
    done = _run(f"{files}/models.py:SimilarityTransformer", "--slurm-out", str(out), *extra)
    assert done.returncode == 2 and done.stdout == "" and not out.exists()
    assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr


def test_model_is_unchanged_and_installed_capabilities_are_called(files, monkeypatch, capsys):
    module = import_location(str(files / "models.py"), "TARGET")  # the module the loader will reuse
    model = module.instance
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def analyse(args):
        calls.append(args.gpu)
        return {"budget_bytes": find_gpu(args.gpu).usable_memory_bytes(), "max_batch_size": 20 if args.gpu == "rtx3060-12gb" else 500}

    def add_arguments(parser):
        cli.add_model_arguments(parser)
        cli.add_input_arguments(parser)
        cli.add_training_arguments(parser)
        parser.add_argument("--gpu")

    fake = types.ModuleType("model_expert.memory.cli")  # where the registry finds memory's CAPABILITY
    fake.__spec__ = importlib.machinery.ModuleSpec("model_expert.memory.cli", None)
    fake.CAPABILITY = cli.Capability("memory", 1, "fake", add_arguments, analyse, lambda d, a: "")
    monkeypatch.setitem(sys.modules, "model_expert.memory.cli", fake)
    code = cli.main(rec.CAPABILITY, [f"{files}/models.py:instance", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and calls == ["rtx3060-12gb", "a100-40gb"]
    assert _value(data, "batch_size", "single_gpu") == 20 and _value(data, "batch_size", "cluster") == 32
    assert data["evidence_sources"]["memory"] == "measured here (memory.py)"
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_l1_term_detected_from_attributes():
    import importlib.util
    spec = importlib.util.spec_from_file_location("ae_example", "examples/autoencoder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.ModelAutoEncoder(input_dim=8, hidden_dims=[4], embedding_dim=2)
    assert rec.l1_attributes(model) == ["l1_weight=0.0001"]
    model.l1_weight = 0.0  # switched off: no L1 term
    assert rec.l1_attributes(model) == []
