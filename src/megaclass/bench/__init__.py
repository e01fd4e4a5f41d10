"""Benchmarks that print side-by-side ratios and write JSON + PNG (``megaclass bench ...``)."""

#: The shipped encoder of the benchmarks' default data (``bench gallery``, ``bench heads``):
#: the model their recorded numbers (README, ``docs/bench``) were measured with, so a re-run
#: reproduces them; ``--model reference`` measures with the current reference model.
BENCH_MODEL = "reference-v1"
