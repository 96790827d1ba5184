"""Benchmarks, run by hand; each writes its own section of docs/benchmarks.md (see README.md)."""
