"""Exercise 11's checks beyond the catalogue: a merge without the -inf guard gives NaN where neither part
saw a key, which the value comparison alone (NaN counted as 0) would let through; the no-NaN property
catches it and says why."""
import pytest
import torch

from tinymoe.grading import INCORRECT, exercise

pytestmark = pytest.mark.exercises


def unguarded_merge(state_a, state_b):
    (m_a, l_a, o_a), (m_b, l_b, o_b) = state_a, state_b
    m = torch.maximum(m_a, m_b)
    scale_a, scale_b = torch.exp(m_a - m), torch.exp(m_b - m)            # NaN where m_a = m_b = -inf
    return m, scale_a * l_a + scale_b * l_b, scale_a[..., None] * o_a + scale_b[..., None] * o_b


def unguarded_finish(state):
    m, l, o = state
    return o / l[..., None], m + torch.log(l)


@pytest.mark.parametrize("question, fn, words", [
    ("merge_softmax_states", unguarded_merge, "exp(-inf - (-inf)) is NaN"),
    ("finish_softmax_state", unguarded_finish, "l = 0"),
])
def test_a_nan_where_no_key_was_seen_fails_with_the_reason(question, fn, words):
    for seed in (0, 1, 2):
        result = getattr(exercise("11_flash_merge_softmax"), question).result(fn, seed=seed)
        assert result.status == INCORRECT and result.stage == "properties", f"seed {seed}: {result.text}"
        assert words in result.text, f"seed {seed}: the feedback does not say why: {result.text}"
