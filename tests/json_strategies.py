"""Hypothesis strategies for JSON values as the change frames carry them."""

from __future__ import annotations

from hypothesis import strategies as st

# Any JSON value orjson writes as pydantic does: 64-bit integers, finite floats.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
