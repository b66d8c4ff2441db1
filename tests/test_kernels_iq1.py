"""IQ1_S and IQ1_M mat-vecs (engine/kernels/iq1.py), float32 and 8-bit activations: the checks of
test_kernels_iq3.py (ggml's dequantized values and vec_dot results, B columns, serial twins)."""

from __future__ import annotations

import pytest

from test_kernels_iq3 import check_columns_and_twins, check_float_matches_dequantized, check_int8_matches_ggml

TYPES = ["IQ1_S", "IQ1_M"]


@pytest.mark.parametrize("type_name", TYPES)
def test_float_matvec_matches_dequantized_rows(type_name):
    check_float_matches_dequantized(type_name)


@pytest.mark.parametrize("type_name", TYPES)
def test_int8_matvec_matches_ggml_vec_dot(type_name):
    """Includes the delta term: IQ1_S from Q8_K's bsums, IQ1_M from sums of 8 codes."""
    check_int8_matches_ggml(type_name)


@pytest.mark.parametrize("type_name", TYPES)
def test_columns_equal_lone_matvecs_and_serial_twin(type_name):
    check_columns_and_twins(type_name)
