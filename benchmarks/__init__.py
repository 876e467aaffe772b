"""Benchmarks: each runs the project's own stages and training loop, prints a table, writes JSON to results/."""
