"""Benchmarks and planted-fault data sets; outside CI (see BENCHMARKS.md)."""
