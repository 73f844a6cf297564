"""`python -m ti_experiments.generate RUN_DIR_OR_EMBEDDING... "prompt" [options]`: see models/generation.py.

Only the command lives here; the Python function is `ti_experiments.generate` (generation.generate).
Importing this module makes Python set `ti_experiments.generate` to the module, so the module is
made callable as that function: `from ti_experiments import generate` works whatever was imported first.
"""

import sys
import types

from ti_experiments.models.generation import generate, main


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
