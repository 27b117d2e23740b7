"""The operator's choice of llama.cpp's weights and where a driver keeps the ones it derives
(drivers/llamacpp_weights.py). Making and measuring a copy needs llama.cpp: test_llamacpp_backend.py."""

import pytest

from llmos.drivers.llamacpp_weights import BATCHED_FILE_TYPES, COPY_MAX_BYTES, cache_dir, wanted_weights, wants_copy


def test_the_weights_are_measured_unless_the_operator_pins_them(monkeypatch):
    monkeypatch.delenv("LLMOS_LLAMACPP_WEIGHTS", raising=False)
    assert wanted_weights() == "measure"
    for given in ("file", "q8_0", "measure", " q8_0 "):
        monkeypatch.setenv("LLMOS_LLAMACPP_WEIGHTS", given)
        assert wanted_weights() == given.strip()
    for bad in ("Q8_0", "q4_0", "fast", "x" * 1000):
        monkeypatch.setenv("LLMOS_LLAMACPP_WEIGHTS", bad)
        with pytest.raises(ValueError, match="give one of measure, file, q8_0") as err:
            wanted_weights()
        assert len(str(err.value)) < 200          # a long value is cut in the message


def test_only_small_files_without_a_blocked_product_get_a_copy():
    small = 94 << 20
    assert wants_copy(3, small) and wants_copy(9, small) and wants_copy(15, small)   # Q4_1, Q5_1, Q4_K_M
    assert wants_copy(None, small)                                                   # a file that does not say
    assert not any(wants_copy(t, small) for t in BATCHED_FILE_TYPES)                # F32, F16, BF16, Q8_0, Q4_0, Q5_0
    assert wants_copy(3, COPY_MAX_BYTES) and not wants_copy(3, COPY_MAX_BYTES + 1)   # a big model keeps its file


def test_derived_weights_go_where_the_kernel_says_else_to_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMOS_CACHE_DIR", str(tmp_path / "state" / "cache"))
    assert cache_dir() == tmp_path / "state" / "cache"
    monkeypatch.delenv("LLMOS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "llmos"
