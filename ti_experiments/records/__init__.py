"""How a run is recorded: trackers (W&B, TensorBoard) and the files of the run directory."""
