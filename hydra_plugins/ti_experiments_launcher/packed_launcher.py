"""`hydra/launcher=packed` (conf/hydra/launcher/packed.yaml): see `ti_experiments.training.pack_launcher`."""

from __future__ import annotations

from hydra.plugins.launcher import Launcher


class PackedLauncher(Launcher):
    """Trains the jobs of a sweep that share model, images and hardware together, in this process."""

    def __init__(self, max_jobs: int = 8) -> None:
        self.max_jobs = int(max_jobs)
        self.config = self.hydra_context = self.task_function = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides, initial_job_idx: int):
        from ti_experiments.training.pack_launcher import launch

        return launch(self.hydra_context, self.task_function, self.config, job_overrides, initial_job_idx,
                      self.max_jobs)
