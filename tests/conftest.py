"""Shared fixtures: tiny official-style releases and DiT files, built once per session.

Everything comes from `wan_export.synthetic`, the one fixture factory. The
cached paths are shared by every test: copy before modifying.
"""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from wan_export import synthetic


@pytest.fixture(scope="session")
def tiny_release(tmp_path_factory):
    """tiny_release(variant, **options) -> path of an official-style release folder (cached)."""
    cache: dict = {}

    def make(variant: str, *, seed: int = 0, dtype: str = "BF16", shards: int = 2) -> str:
        key = (variant, seed, dtype, shards)
        if key not in cache:
            folder = tmp_path_factory.mktemp("release") / variant
            cache[key] = synthetic.write_release(str(folder), variant, seed=seed, dtype=dtype, shards=shards)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_dit_file(tmp_path_factory):
    """tiny_dit_file(variant, dtype="BF16", seed=0) -> path of one stock-named DiT .safetensors (cached)."""
    cache: dict = {}

    def make(variant: str, dtype: str = "BF16", seed: int = 0) -> str:
        key = (variant, dtype, seed)
        if key not in cache:
            path = tmp_path_factory.mktemp("dit") / f"{variant}_{dtype.lower()}.safetensors"
            state = synthetic.dit_state(synthetic.tiny_dit_config(variant), seed, dtype)
            cache[key] = synthetic.write_safetensors(str(path), state)
        return cache[key]

    return make


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()
