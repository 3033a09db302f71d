"""TARGET forms, --kwargs, --config, --checkpoint (weights_only) and --device."""

import json
import os

import pytest
import torch

from conftest import REPO, run_script
from model_expert.errors import UserError
from model_expert.target import load_model, parse_ini_value, read_config_section

FIXTURES = "tests/fixtures/models.py"


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)


def test_class_factory_and_instance_targets():
    assert isinstance(load_model(f"{FIXTURES}:TinyMLP").module, torch.nn.Module)
    assert load_model(f"{FIXTURES}:make_mlp", kwargs={"hidden": 5}).module.net[0].out_features == 5
    loaded = load_model(f"{FIXTURES}:INSTANCE")
    assert loaded.owned is False  # the instance itself, untouched, no copy needed


def test_dotted_module_target():
    loaded = load_model("examples.similarity_transformer:SimilarityTransformer", kwargs={"num_layers": 1})
    assert len(loaded.module.encoder.layers) == 1


def test_instance_on_another_device_is_copied_not_moved():
    loaded = load_model(f"{FIXTURES}:INSTANCE", device="meta")
    assert loaded.module.net[0].weight.device.type == "meta"
    from model_expert.target import import_location
    original = import_location(FIXTURES, "TARGET").INSTANCE
    assert original.net[0].weight.device.type == "cpu"


def test_meta_device_allocates_nothing():
    loaded = load_model("tests/fixtures/hf_models.py:llama_7b", device="meta")
    assert all(p.device.type == "meta" for p in loaded.module.parameters())


def test_ini_values_are_literals():
    assert parse_ini_value("512") == 512 and parse_ini_value("0.1") == 0.1 and parse_ini_value("[2048, 1024]") == [2048, 1024]
    assert parse_ini_value("gelu") == "gelu" and parse_ini_value("True") is True
    section = read_config_section("examples/config.ini:autoencoder")
    assert section == {"input_dim": 4096, "hidden_dims": [2048, 1024], "embedding_dim": 512, "activation": "relu",
                       "dropout": 0.1, "l1_weight": 1e-4}


def test_config_then_kwargs_override():
    loaded = load_model("examples/autoencoder.py:ModelAutoEncoder", config="examples/config.ini:autoencoder",
                        kwargs={"input_dim": 64, "hidden_dims": [32], "embedding_dim": 16})
    assert loaded.module.encoder[0].in_features == 64 and loaded.kwargs["activation"] == "relu"


def test_unknown_kwarg_names_what_is_accepted():
    with pytest.raises(UserError, match=r"hiden.*accepts hidden, frozen_first"):
        load_model(f"{FIXTURES}:make_mlp", kwargs={"hiden": 3})


def test_checkpoint_round_trip(tmp_path):
    source = load_model(f"{FIXTURES}:TinyMLP").module
    path = tmp_path / "ckpt.pt"
    torch.save({"model_state_dict": source.state_dict(), "epoch": 3}, path)
    loaded = load_model(f"{FIXTURES}:TinyMLP", checkpoint=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(value, loaded.module.state_dict()[key])


def test_checkpoint_key_mismatch_names_keys(tmp_path):
    state = load_model(f"{FIXTURES}:TinyMLP").module.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["net.2.bias"]
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    result = run_script("params", f"{FIXTURES}:TinyMLP", "--checkpoint", path)
    assert result.returncode == 2
    assert "missing 1 key(s): net.2.bias" in result.stderr and "unexpected 1 key(s): extra.weight" in result.stderr


def test_checkpoint_from_ddp_wrapper_is_unwrapped_and_said(tmp_path):
    # DistributedDataParallel(model).state_dict() prefixes every key with 'module.'; torch.compile's with '_orig_mod.'
    source = load_model(f"{FIXTURES}:TinyMLP").module
    path = tmp_path / "ddp.pt"
    torch.save({"state_dict": {"module._orig_mod." + k: v for k, v in source.state_dict().items()}}, path)
    result = run_script("params", f"{FIXTURES}:TinyMLP", "--checkpoint", path, "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)["checkpoint"]
    assert (info["wrapper_key"], info["prefix_stripped"], info["tensors"], info["loaded"]) == \
        ("state_dict", "module._orig_mod.", len(source.state_dict()), True)
    table = run_script("params", f"{FIXTURES}:TinyMLP", "--checkpoint", path)
    assert ("Checkpoint: " + str(path) + f": {len(source.state_dict())} tensors loaded; unwrapped from the checkpoint's "
            "'state_dict' entry; the key prefix 'module._orig_mod.' stripped") in table.stdout
    loaded = load_model(f"{FIXTURES}:TinyMLP", checkpoint=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(value, loaded.module.state_dict()[key])


def test_checkpoint_prefix_that_does_not_fit_gets_a_hint(tmp_path):
    state = {"module." + k: v for k, v in load_model(f"{FIXTURES}:TinyMLP").module.state_dict().items()}
    state["module.extra.weight"] = torch.zeros(1)     # stripping 'module.' leaves a key the model lacks
    path = tmp_path / "ddp_other.pt"
    torch.save(state, path)
    result = run_script("params", f"{FIXTURES}:TinyMLP", "--checkpoint", path)
    assert result.returncode == 2
    assert "start with 'module.'" in result.stderr and "save model.module.state_dict()" in result.stderr


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('EXPLOIT_MARKER', '/tmp/model-expert-pwned')}",))


def test_pickle_with_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    os.environ["EXPLOIT_MARKER"] = str(marker)
    try:
        path = tmp_path / "evil.pt"
        torch.save({"net.0.weight": _Exploit()}, path)
    finally:
        del os.environ["EXPLOIT_MARKER"]
    result = run_script("params", f"{FIXTURES}:TinyMLP", "--checkpoint", path)
    assert result.returncode == 2
    assert "refused: it would run code when loaded" in result.stderr and "posix.system" in result.stderr
    assert "weights_only=False" not in result.stderr
    assert not marker.exists(), "the pickled command ran"


def test_meta_checkpoint_checks_shapes(tmp_path):
    state = load_model(f"{FIXTURES}:make_mlp", kwargs={"hidden": 7}).module.state_dict()
    path = tmp_path / "other.pt"
    torch.save(state, path)
    result = run_script("params", f"{FIXTURES}:TinyMLP", "--checkpoint", path, "--device", "meta")
    assert result.returncode == 2 and "wrong shapes" in result.stderr and "net.0.weight (7, 8) vs model (16, 8)" in result.stderr


def test_params_cli_json_from_config():
    result = run_script("params", "examples/autoencoder.py:ModelAutoEncoder", "--config", "examples/config.ini:autoencoder",
                        "--kwargs", '{"input_dim": 1024}', "--json", "--device", "meta")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["total"] == (1024 * 2048 + 2048) + (2048 * 1024 + 1024) + (1024 * 512 + 512) \
        + (512 * 1024 + 1024) + (1024 * 2048 + 2048) + (2048 * 1024 + 1024)
