"""The configs ride inside the wheel: conf/ and sweeps/ stay at the top of the repository (where Hydra's
users and the docs expect them) and are copied to ti_experiments/conf and ti_experiments/sweeps when a
wheel is built. An editable install reads them from the checkout instead (ti_experiments.config)."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA_DIRS = ("conf", "sweeps")


class BuildWithConfigs(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        here = Path(__file__).resolve().parent
        for name in DATA_DIRS:
            target = Path(self.build_lib) / "ti_experiments" / name
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(here / name, target, ignore=shutil.ignore_patterns("*.pyc", "__pycache__"))


setup(cmdclass={"build_py": BuildWithConfigs})
