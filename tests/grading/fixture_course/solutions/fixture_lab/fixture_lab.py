# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Fixture lab for the grading tests
#
# A tiny lab in the course's format (answer cells, locked test cells with visible and hidden tests, a
# trusted helper) that runs in well under a second, so the grading scenarios in `tests/test_grading_*.py`
# can be checked on every `make test`. It uses numpy only: a worker starts in a fraction of a second.

# %% nbgrader={"grade": false, "grade_id": "setup", "locked": true, "schema_version": 3, "solution": false}
import numpy as np


def check_close(actual, expected, what):
    """The tests' helper: `actual` is an array with `expected`'s values."""
    assert isinstance(actual, np.ndarray), f"{what}: expected a numpy array, got {type(actual).__name__}"
    np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-9, err_msg=what)


# %% [markdown]
# ## Part 1. Softmax (3 points)
#
# Write `softmax(x, axis=-1)`: `exp(x)` normalised to sum to 1 along `axis`, without overflow.

# %% nbgrader={"grade": false, "grade_id": "softmax_answer", "locked": false, "schema_version": 3, "solution": true}
def softmax(x, axis=-1):
    ### BEGIN SOLUTION
    z = np.exp(x - x.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "softmax_test", "locked": true, "points": 2, "schema_version": 3, "solution": false}
check_close(softmax(np.array([0.0, 0.0])), np.array([0.5, 0.5]), "softmax of two zeros")
### BEGIN HIDDEN TESTS
_x = np.array([[1000.0, 1000.0], [1.0, 2.0]])
check_close(softmax(_x), np.array([[0.5, 0.5], [1 / (1 + np.e), np.e / (1 + np.e)]]), "large values")
### END HIDDEN TESTS

# %% nbgrader={"grade": true, "grade_id": "softmax_axis_test", "locked": true, "points": 1, "schema_version": 3, "solution": false}
assert np.allclose(softmax(np.ones((2, 3)), axis=0), 0.5), "axis=0 normalises each column"
### BEGIN HIDDEN TESTS
assert np.allclose(softmax(np.arange(6.0).reshape(3, 2), axis=0).sum(axis=0), 1.0)
### END HIDDEN TESTS

# %% [markdown]
# ## Part 2. Parameter count (1 point)
#
# Write `count_params(d_in, d_out, bias=True)`: the number of parameters of a linear layer.

# %% nbgrader={"grade": false, "grade_id": "count_answer", "locked": false, "schema_version": 3, "solution": true}
def count_params(d_in, d_out, bias=True):
    ### BEGIN SOLUTION
    return d_in * d_out + (d_out if bias else 0)
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "count_test", "locked": true, "points": 1, "schema_version": 3, "solution": false}
assert count_params(3, 4) == 16, "weights and biases"
### BEGIN HIDDEN TESTS
assert count_params(5, 7, bias=False) == 35
assert count_params(1, 1) == 2
### END HIDDEN TESTS

# %% [markdown]
# ## Part 3. Causal mask (2 points)
#
# Write `causal_mask(T)`: a boolean `(T, T)` array, `True` where query `i` may attend to key `j <= i`.

# %% nbgrader={"grade": false, "grade_id": "mask_answer", "locked": false, "schema_version": 3, "solution": true}
def causal_mask(T):
    ### BEGIN SOLUTION
    return np.tril(np.ones((T, T), dtype=bool))
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "mask_test", "locked": true, "points": 2, "schema_version": 3, "solution": false}
assert causal_mask(3).dtype == bool and causal_mask(3).shape == (3, 3)
assert not causal_mask(3)[0, 1] and causal_mask(3)[2, 0]
### BEGIN HIDDEN TESTS
for _T in (1, 2, 5):
    assert np.array_equal(causal_mask(_T), np.tril(np.ones((_T, _T), dtype=bool))), f"T={_T}"
### END HIDDEN TESTS

# %% [markdown]
# ## Part 4. Running total (1 point)
#
# Write `running_total(xs)`: the list of prefix sums of `xs`.

# %% nbgrader={"grade": false, "grade_id": "total_answer", "locked": false, "schema_version": 3, "solution": true}
def running_total(xs):
    ### BEGIN SOLUTION
    out, acc = [], 0
    for x in xs:
        acc += x
        out.append(acc)
    return out
    ### END SOLUTION


# %% nbgrader={"grade": true, "grade_id": "total_test", "locked": true, "points": 1, "schema_version": 3, "solution": false}
assert running_total([1, 2, 3]) == [1, 3, 6]
### BEGIN HIDDEN TESTS
assert running_total([]) == [] and running_total([5]) == [5]
### END HIDDEN TESTS
