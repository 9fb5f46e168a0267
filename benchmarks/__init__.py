"""Benchmarks (`make bench`): figures measured on this machine in one run, reported as ratios."""
