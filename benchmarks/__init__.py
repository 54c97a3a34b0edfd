"""Benchmark scripts (not tests): each prints a summary and saves JSON under results/."""
