"""Benchmarks: each starts what it measures and returns one result Struct."""
