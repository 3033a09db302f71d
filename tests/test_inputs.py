"""The --input grammar, factories and example_inputs()."""

import pytest
import torch

from model_expert.errors import UserError
from model_expert.inputs import FactoryInputs, SpecInputs, parse_input_spec


def test_named_dims_reuse_and_overrides():
    source = SpecInputs(["float32[B=4,T=10,512]", "bool[B,T]", "ids=int64[B,7]<100"])
    inputs = source.build("cpu", {"B": 2, "T": 3})
    assert [tuple(t.shape) for t in inputs.args] == [(2, 3, 512), (2, 3)]
    assert tuple(inputs.kwargs["ids"].shape) == (2, 7) and inputs.kwargs["ids"].dtype == torch.int64
    assert int(inputs.kwargs["ids"].max()) < 100
    assert not inputs.args[1].any()  # bool masks default to all False: nothing padded
    assert source.batch_dim_name == "B" and source.resizable_dims == {"B": 4, "T": 10}


def test_deterministic_and_rng_free():
    state = torch.get_rng_state()
    a = SpecInputs(["float32[3,4]"]).build("cpu", seed=5).args[0]
    b = SpecInputs(["float32[3,4]"]).build("cpu", seed=5).args[0]
    assert torch.equal(a, b) and torch.equal(state, torch.get_rng_state())


def test_meta_inputs():
    inputs = SpecInputs(["bfloat16[B=2,8]"]).build("meta")
    assert inputs.args[0].device.type == "meta" and inputs.args[0].dtype == torch.bfloat16


@pytest.mark.parametrize("text, message", [
    ("flaot32[4,8]", "unknown dtype 'flaot32'"),
    ("float32[4,8", "square brackets"),
    ("float32[-1]", "negative"),
    ("float32[2.5]", "not a whole number"),
    ("float32[T]", "has no size"),
    ("", "empty"),
    ("float32[2]<5", "integer and bool inputs only"),
    ("int64[2]<0", "positive whole number"),
])
def test_bad_specs(text, message):
    with pytest.raises(UserError, match=message):
        parse_input_spec(text)


def test_conflicting_and_ordering_errors():
    with pytest.raises(UserError, match="is 3 here but 2 earlier"):
        SpecInputs(["float32[B=2]", "float32[B=3]"])
    with pytest.raises(UserError, match="put positional inputs first"):
        SpecInputs(["x=float32[2]", "float32[2]"])
    with pytest.raises(UserError, match="no input dim is named T"):
        SpecInputs(["float32[B=2]"]).build("cpu", {"T": 4})


def test_factory_batch_size_and_shapes():
    def make(batch_size=4):
        return (torch.zeros(batch_size, 3),), {"mask": torch.ones(batch_size, dtype=torch.bool)}

    source = FactoryInputs(make, "make()")
    inputs = source.build("cpu", {"B": 6})
    assert inputs.args[0].shape == (6, 3) and inputs.kwargs["mask"].shape == (6,)
    assert source.resizable_dims == {"B": 4}
    with pytest.raises(UserError, match="no integer keyword T"):
        source.build("cpu", {"T": 3})


def test_factory_integer_keywords_are_named_dims():
    def make(batch_size=2, max_images=5, scale=1.5):
        return torch.zeros(batch_size, max_images)

    source = FactoryInputs(make, "make()")
    assert source.resizable_dims == {"B": 2, "max_images": 5}  # scale is a float: not a dim
    assert source.build("cpu", {"B": 3, "max_images": 7}).args[0].shape == (3, 7)


def test_factory_on_meta_device_and_errors():
    inputs = FactoryInputs(lambda: torch.zeros(2), "f()").build("meta")
    assert inputs.args[0].device.type == "meta"
    with pytest.raises(UserError, match="raised ZeroDivisionError"):
        FactoryInputs(lambda: 1 / 0, "f()").build("cpu")
    with pytest.raises(UserError, match="returned str"):
        FactoryInputs(lambda: "x", "f()").build("cpu")
    with pytest.raises(UserError, match="does not accept batch_size"):
        FactoryInputs(lambda: torch.zeros(2), "f()").build("cpu", {"B": 3})
