"""Benchmarks: figures for the docs and closing notes, never pass/fail tests."""
