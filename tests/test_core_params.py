"""Specifications of ParamSpec, the map between named tensors and one flat float32 vector."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from fedwarden.core.errors import SpecMismatchError
from fedwarden.core.params import ParamSpec, TensorSpec

# float16 and float32 values are exactly representable in the float32 vector,
# so the round trip through it must be exact, NaN and infinities included.
float_arrays = hnp.arrays(
    dtype=st.sampled_from([np.dtype(np.float16), np.dtype(np.float32)]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
)


def three_tensors() -> dict[str, np.ndarray]:
    """A weight matrix, a bias vector and a scalar, with distinct values everywhere."""
    return {
        "weight": np.arange(12, dtype=np.float32).reshape(3, 4),
        "bias": np.arange(12, 16, dtype=np.float32),
        "scale": np.array(16.0, dtype=np.float32),
    }


@settings(max_examples=60, deadline=None)
@given(st.lists(float_arrays, min_size=0, max_size=6))
def test_flatten_then_views_returns_every_tensor_of_a_list_exactly(
    arrays: list[np.ndarray],
) -> None:
    spec = ParamSpec.from_arrays(arrays)
    views = spec.views(spec.flatten(arrays))
    assert list(views) == [str(i) for i in range(len(arrays))]
    for array, view in zip(arrays, views.values(), strict=True):
        assert view.shape == array.shape
        np.testing.assert_array_equal(view, array.astype(np.float32))


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), float_arrays, max_size=6))
def test_flatten_then_views_returns_every_tensor_of_a_mapping_exactly(
    arrays: dict[str, np.ndarray],
) -> None:
    spec = ParamSpec.from_arrays(arrays)
    views = spec.views(spec.flatten(arrays))
    assert list(views) == list(arrays)
    assert spec.size == sum(array.size for array in arrays.values())
    for name, array in arrays.items():
        assert views[name].shape == array.shape
        np.testing.assert_array_equal(views[name], array.astype(np.float32))


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), float_arrays, max_size=6))
def test_json_round_trip_gives_an_equal_spec(arrays: dict[str, np.ndarray]) -> None:
    spec = ParamSpec.from_arrays(arrays)
    restored = ParamSpec.from_json(spec.to_json())
    assert restored == spec
    assert all(isinstance(t.shape, tuple) for t in restored.tensors)


def test_offsets_follow_tensor_order_and_size_is_the_total_element_count() -> None:
    spec = ParamSpec.from_arrays(three_tensors())
    assert spec.tensors == (
        TensorSpec("weight", (3, 4), "float32", 0),
        TensorSpec("bias", (4,), "float32", 12),
        TensorSpec("scale", (), "float32", 16),
    )
    assert spec.size == 17
    assert spec.names == ("weight", "bias", "scale")
    np.testing.assert_array_equal(spec.flatten(three_tensors()), np.arange(17, dtype=np.float32))


def test_an_empty_spec_has_size_zero() -> None:
    spec = ParamSpec.from_arrays([])
    assert spec.size == 0
    assert spec.zeros().shape == (0,)
    assert spec.views(spec.zeros()) == {}


def test_views_share_memory_with_the_vector_and_writes_reach_it() -> None:
    spec = ParamSpec.from_arrays(three_tensors())
    vector = spec.flatten(three_tensors())
    views = spec.views(vector)
    assert all(np.shares_memory(view, vector) for view in views.values())

    views["bias"][2] = -1.0
    views["scale"][...] = -2.0
    views["weight"][1, 0] = -3.0

    assert vector[12 + 2] == -1.0
    assert vector[16] == -2.0
    assert vector[1 * 4 + 0] == -3.0


def test_writes_to_the_vector_are_seen_through_the_views() -> None:
    spec = ParamSpec.from_arrays(three_tensors())
    vector = spec.zeros()
    views = spec.views(vector)
    vector[:] = np.arange(17, dtype=np.float32)
    np.testing.assert_array_equal(views["weight"], three_tensors()["weight"])
    np.testing.assert_array_equal(views["bias"], three_tensors()["bias"])


def test_flatten_fills_the_given_buffer_in_place() -> None:
    spec = ParamSpec.from_arrays(three_tensors())
    buffer = np.full(spec.size, np.nan, dtype=np.float32)
    result = spec.flatten(three_tensors(), out=buffer)
    assert result is buffer
    np.testing.assert_array_equal(buffer, np.arange(17, dtype=np.float32))


def test_flatten_refuses_a_tensor_of_another_shape_and_names_it() -> None:
    spec = ParamSpec.from_arrays(three_tensors())
    tensors = three_tensors()
    tensors["bias"] = np.zeros(5, dtype=np.float32)
    with pytest.raises(SpecMismatchError, match=r"'bias'.*\(5,\).*\(4,\)"):
        spec.flatten(tensors)


def test_flatten_refuses_a_reshaped_tensor_of_the_same_size() -> None:
    spec = ParamSpec.from_arrays(three_tensors())
    tensors = list(three_tensors().values())
    tensors[0] = tensors[0].reshape(4, 3)
    with pytest.raises(SpecMismatchError, match=r"'weight'.*\(4, 3\).*\(3, 4\)"):
        spec.flatten(tensors)


def test_flatten_refuses_a_list_with_too_few_tensors_and_names_the_expected_ones() -> None:
    spec = ParamSpec.from_arrays(three_tensors())
    tensors = list(three_tensors().values())[:2]
    with pytest.raises(
        SpecMismatchError, match=r"expected 3 tensors \(weight, bias, scale\), got 2"
    ):
        spec.flatten(tensors)


def test_flatten_refuses_a_list_with_too_many_tensors() -> None:
    spec = ParamSpec.from_arrays(three_tensors())
    tensors = [*three_tensors().values(), np.zeros(2, dtype=np.float32)]
    with pytest.raises(SpecMismatchError, match=r"expected 3 tensors .*got 4"):
        spec.flatten(tensors)


def test_flatten_refuses_a_mapping_missing_a_tensor_and_names_it() -> None:
    spec = ParamSpec.from_arrays(three_tensors())
    tensors = three_tensors()
    del tensors["bias"]
    with pytest.raises(SpecMismatchError, match="bias"):
        spec.flatten(tensors)


def test_flatten_refuses_a_mapping_with_a_tensor_the_spec_does_not_know_and_names_it() -> None:
    spec = ParamSpec.from_arrays(three_tensors())
    tensors = {**three_tensors(), "extra": np.zeros(2, dtype=np.float32)}
    with pytest.raises(SpecMismatchError, match="extra"):
        spec.flatten(tensors)


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        (np.zeros(17, dtype=np.float64), "float64"),
        (np.zeros(16, dtype=np.float32), r"\(16,\).*\(17,\)"),
        (np.zeros(18, dtype=np.float32), r"\(18,\).*\(17,\)"),
        (np.zeros((17, 1), dtype=np.float32), r"\(17, 1\).*\(17,\)"),
    ],
    ids=["float64", "too_short", "too_long", "not_flat"],
)
def test_a_vector_of_the_wrong_dtype_or_length_is_refused(vector: np.ndarray, message: str) -> None:
    spec = ParamSpec.from_arrays(three_tensors())
    with pytest.raises(SpecMismatchError, match=message):
        spec.views(vector)
    with pytest.raises(SpecMismatchError, match=message):
        spec.flatten(three_tensors(), out=vector)


def test_a_torch_state_dict_is_described_flattened_and_viewed() -> None:
    torch.manual_seed(0)
    state = torch.nn.Linear(3, 2).state_dict()
    spec = ParamSpec.from_arrays(state)

    assert spec.tensors == (
        TensorSpec("weight", (2, 3), "float32", 0),
        TensorSpec("bias", (2,), "float32", 6),
    )
    vector = spec.flatten(state)
    expected = np.concatenate([state["weight"].numpy().ravel(), state["bias"].numpy()])
    np.testing.assert_array_equal(vector, expected)
    views = spec.views(vector)
    np.testing.assert_array_equal(views["weight"], state["weight"].numpy())
    np.testing.assert_array_equal(views["bias"], state["bias"].numpy())


def test_scikit_learn_coefficients_are_described_flattened_and_viewed() -> None:
    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(x, y)
    arrays = {"coef_": model.coef_, "intercept_": model.intercept_}
    spec = ParamSpec.from_arrays(arrays)

    assert spec.tensors == (
        TensorSpec("coef_", (3, 4), "float64", 0),
        TensorSpec("intercept_", (3,), "float64", 12),
    )
    views = spec.views(spec.flatten(arrays))
    np.testing.assert_array_equal(views["coef_"], model.coef_.astype(np.float32))
    np.testing.assert_array_equal(views["intercept_"], model.intercept_.astype(np.float32))
