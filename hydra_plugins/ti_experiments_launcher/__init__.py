"""Hydra finds launchers only in the `hydra_plugins` namespace: this package holds ti_experiments' own."""
