"""The ggml type table agrees with the golden files and with each quantizer class."""
import pytest

from tests.shared_data import golden
from wan_export.quantizers.ggml import BLOCK_TYPES, GGML_TYPES, quantizer


@pytest.mark.parametrize("name", BLOCK_TYPES)
def test_golden_layout_matches_table(name):
    z, t = golden(name), GGML_TYPES[name]
    assert (int(z["ggml_type"]), int(z["block_size"]), int(z["type_size"])) == \
        (t.type_id, t.block_size, t.type_size)
    assert getattr(quantizer(name), "type_size", t.type_size) == t.type_size
