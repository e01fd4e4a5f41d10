"""Benchmarks that print side-by-side ratios and write JSON + PNG (``megaclass bench ...``)."""
