"""Block-by-block DiT parity equals the whole-model forward, localises error per block, and holds
one block of each weight set at a time."""
from __future__ import annotations

import pytest
import torch

from wan_export import synthetic
from wan_export.validators.blockwise import blockwise_outputs, check_dit_blockwise
from wan_export.validators.parity import DIT_CASES, dit_outputs
from wan_export.validators.report import Report, Tolerance


def _state(variant):
    cfg = synthetic.tiny_dit_config(variant)
    return cfg, {k: torch.from_numpy(v.copy()) for k, v in synthetic.dit_state(cfg, 0).items()}


@pytest.mark.parametrize("variant", ["wan2.1-t2v-1.3b", "wan2.1-i2v-14b", "wan2.1-vace-1.3b", "wan2.2-ti2v-5b"])
def test_outputs_equal_the_whole_model(variant):
    cfg, sd = _state(variant)
    art = dict(sd)
    art["blocks.1.ffn.0.weight"] = sd["blocks.1.ffn.0.weight"] * 1.01
    ref_out, art_out, rows = blockwise_outputs(sd, art, cfg)
    for got, want in zip(ref_out, dit_outputs(sd, cfg)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for got, want in zip(art_out, dit_outputs(art, cfg)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    by_block = {r["block"]: r for r in rows}
    assert by_block["blocks.0"]["rel_l2"] == 0 and by_block["blocks.0"]["free_running_rel_l2"] == 0
    assert by_block["blocks.1"]["rel_l2"] > 0 and by_block["blocks.1"]["free_running_rel_l2"] > 0
    assert len(rows) == cfg.num_layers + len(cfg.vace_layers)


def test_report_and_one_block_at_a_time(tiny_dit_file, monkeypatch):
    from wan_export.components import load_component
    from wan_export.validators import blockwise

    comp = load_component(tiny_dit_file("wan2.1-t2v-1.3b", "F32"))
    loaded, peak = set(), [0]
    real = blockwise._Side.block

    def spy(self, kind, i):
        loaded.add((id(self), kind, i))
        peak[0] = max(peak[0], len(loaded))
        return real(self, kind, i)

    def free(self, kind, i):
        loaded.discard((id(self), kind, i))
        getattr(self.model, kind)[i].to("meta")
    monkeypatch.setattr(blockwise._Side, "block", spy)
    monkeypatch.setattr(blockwise._Side, "free", free)
    report = Report("a", "b", "test")
    check_dit_blockwise(report, comp.table, comp.table, comp.config, Tolerance(max_abs=0.0))
    assert report.passed and [c.name for c in report.checks] == [f"dit output {c.label}" for c in DIT_CASES]
    table = next(iter(report.tables.values()))
    assert [r["block"] for r in table] == ["blocks.0", "blocks.1"] and peak[0] == 2    # one block per side
