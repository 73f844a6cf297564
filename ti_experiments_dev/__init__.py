"""The workshop: what builds and measures ti-experiments, beside the product and not in its wheel.

It imports the product (`ti_experiments`) and is never imported by it: `pretrain` rebuilds the toy
world's shipped model and judge, `quality` measures them and textual inversion on them. Run from a
source checkout: `python -m ti_experiments_dev.pretrain`, `python -m ti_experiments_dev.quality`.
"""
