"""Parity metrics, back-loaders that read artifacts through their consumers, and reports."""
