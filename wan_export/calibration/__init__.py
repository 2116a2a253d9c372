"""Calibration: activation statistics of the reference DiT doing its real job.

`stats` holds the mergeable per-layer accumulators, `recorder` the forward hooks
that feed them, `calibfile` the CALIB .safetensors format, `prompts` the built-in
prompt set and prompt-file readers, `distributed` the torchrun split and exact
reduction, and `run` the `wan-export calibrate` pipeline that ties them together.
"""
