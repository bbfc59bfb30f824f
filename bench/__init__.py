"""Benchmarks, run through `skylark bench NAME`."""
