"""Tracker choice for Accelerate, with W&B that runs offline instead of ever asking for a login."""

from __future__ import annotations

import logging
import netrc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import TIError
from .files import write_text_atomic
from .network import answers
from .run_dir import WANDB_ID
from ..config.settings import Settings, bound

log = logging.getLogger(__name__)

TRACKERS = ("wandb", "tensorboard", "none")


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"


@dataclass
class TrackerSettings(Settings):
    """The `logger` config group."""

    GROUP = "logger"

    name: Literal[TRACKERS] = "wandb"
    project: str = bound("ti-experiments", example="ti-experiments")
    entity: str | None = bound(None, example="my-team")
    run_name: str | None = bound(None, example="first-try")
    group: str | None = bound(None, example="lr-sweep")
    tags: list[str] = bound(factory=list, example="[baseline]")
    # null or auto: online with credentials, else offline (WANDB_MODE wins)
    mode: Literal["online", "offline", "disabled", "auto"] | None = None

    def identify(self, run_dir: Path, sweep: str | None = None, job: int | None = None,
                 choices: dict | None = None) -> None:
        """Defaults from where the run sits: sweep jobs share a group, the run's choices become tags."""
        if self.group is None and sweep is not None:
            self.group = sweep
        if self.run_name is None:
            self.run_name = f"{sweep}/{job}" if sweep is not None else Path(run_dir).name
        self.tags = list(dict.fromkeys([*self.tags, *[f"{k}:{v}" for k, v in (choices or {}).items()]]))

    @property
    def log_with(self) -> str | None:
        return None if self.name == "none" else self.name

    def wandb_mode(self) -> str:
        """WANDB_MODE wins; then the config; 'online' without credentials becomes 'offline'."""
        if os.environ.get("WANDB_MODE") == "":
            del os.environ["WANDB_MODE"]  # wandb itself rejects an empty value
        mode = os.environ.get("WANDB_MODE") or self.mode
        if mode in (None, "auto"):
            mode = "online" if wandb_has_credentials() else "offline"
        if mode == "online" and not wandb_has_credentials():
            log.warning("W&B: no credentials (WANDB_API_KEY or `wandb login`), logging offline instead")
            mode = "offline"
        if mode not in ("online", "offline", "disabled"):
            raise TIError(f"logger.mode={mode!r} is unknown", "use online, offline, disabled or null (auto)")
        return mode

    def start(self, accelerator, run_dir: Path, config: dict, resuming: bool = False, beside_others: bool = False
              ) -> None:
        """Open the tracker run on the main process; the config is flattened for TensorBoard. A run
        resumed in its own directory continues its W&B run (same id) instead of starting a new one.
        `beside_others`: other runs stay open in this process (a packed sweep), so W&B's global run is left
        alone."""
        if self.log_with is None:
            return
        init_kwargs = {}
        id_file = Path(run_dir) / WANDB_ID
        if self.name == "wandb":
            import wandb

            init_kwargs["wandb"] = {
                "dir": str(run_dir), "mode": self.wandb_mode(), "entity": self.entity,
                "name": self.run_name, "group": self.group, "tags": list(self.tags),
                "settings": wandb.Settings(init_timeout=30),
                **({"reinit": "create_new"} if beside_others else {}),
            }
            if init_kwargs["wandb"]["mode"] == "online" and not answers(wandb_url()):
                # wandb.init would wait for its own timeout, and more, before failing
                log.warning("W&B: %s does not answer (no network?); logging offline instead", wandb_url())
                init_kwargs["wandb"]["mode"] = "offline"
            if resuming and id_file.is_file():
                init_kwargs["wandb"].update(id=id_file.read_text().strip(), resume="allow")
            self._offline_env(init_kwargs["wandb"]["mode"])
            tracker_config = None  # given to this run below: Accelerate would write it to the global wandb.config
        else:
            tracker_config = flatten(config)
        try:
            accelerator.init_trackers(self.project, config=tracker_config, init_kwargs=init_kwargs)
        except Exception as exc:  # noqa: BLE001 - W&B online but unreachable: keep the run, log offline
            if self.name != "wandb" or init_kwargs["wandb"]["mode"] != "online":
                raise
            log.warning("W&B could not start online (%s); logging offline instead", str(exc).splitlines()[0])
            accelerator.trackers = []
            init_kwargs["wandb"]["mode"] = "offline"
            self._offline_env("offline")
            accelerator.init_trackers(self.project, config=tracker_config, init_kwargs=init_kwargs)
        if not accelerator.trackers and accelerator.is_main_process:
            raise TIError(f"the {self.name} tracker did not start (is the package installed?)",
                          f"pip install {self.name}, or use logger=none")
        if self.name == "wandb" and accelerator.is_main_process:
            run = _wandb_run(accelerator)
            if run is not None:
                run.config.update(config, allow_val_change=True)
            if getattr(run, "id", None):
                write_text_atomic(id_file, run.id)

    def _offline_env(self, mode: str) -> None:
        """An offline run also says so in WANDB_MODE while it lasts: given only as wandb.init's argument,
        wandb still reaches for the network at exit (about 10 s more, with no network)."""
        if mode != "offline":
            return
        if not hasattr(self, "_saved_mode"):
            self._saved_mode = os.environ.get("WANDB_MODE")
        os.environ["WANDB_MODE"] = "offline"

    def log_images(self, accelerator, step: int, images: dict[str, list]) -> None:
        """Validation images at the global step, captioned with their prompt."""
        if not images or not accelerator.is_main_process:
            return
        for tracker in accelerator.trackers:
            if tracker.name == "wandb":
                import wandb

                tracker.log({"validation": [wandb.Image(img, caption=prompt)
                                            for prompt, imgs in images.items() for img in imgs]}, step=step)
            elif tracker.name == "tensorboard":
                import numpy as np

                for p, (prompt, imgs) in enumerate(images.items()):
                    batch = np.stack([np.asarray(img) for img in imgs])
                    tracker.writer.add_images(f"validation/{p:02d}", batch, step, dataformats="NHWC")
                    tracker.writer.add_text(f"validation/{p:02d}/prompt", prompt, step)

    def finish(self, accelerator, failed: bool = False) -> None:
        """Finish every tracker (a failed run is marked failed in W&B); say how to upload an offline run."""
        run = None
        if self.name == "wandb" and accelerator.is_main_process:
            run = _wandb_run(accelerator)
        settings = getattr(run, "settings", None)
        if run is not None and failed:
            run.finish(exit_code=1)
        accelerator.end_training()
        if hasattr(self, "_saved_mode"):  # the environment as it was before the run
            os.environ.pop("WANDB_MODE", None) if self._saved_mode is None else os.environ.update(WANDB_MODE=self._saved_mode)
            del self._saved_mode
        if settings is not None and getattr(settings, "mode", "") == "offline":
            log.info("W&B ran offline; upload this run later with: wandb sync %s", settings.sync_dir)


def _wandb_run(accelerator):
    """The raw W&B run behind Accelerate's tracker, or None."""
    return next((getattr(t, "run", None) for t in accelerator.trackers if t.name == "wandb"), None)


def flatten(config: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists and None become strings (TensorBoard hparams)."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat
