"""Where the frozen models run, and in what form: one place for training, evaluation and the benchmark.

Device and dtype come from the Accelerator (its mixed precision); the hardware settings decide
attention, channels-last, TF32, gradient checkpointing and offloading. TF32 is a process-wide switch:
`process_settings` sets it for a run and puts the previous values back when the run ends.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..errors import TIError
from .settings import HardwareSettings

log = logging.getLogger(__name__)


def weight_dtype_for(mixed_precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def setup_attention(unet, attention: str, device: torch.device) -> None:
    """sdpa is diffusers' default on torch 2; xformers only where it is installed and CUDA runs."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if attention == "xformers":
        try:
            import xformers  # noqa: F401
        except ImportError:
            log.info("xformers is not installed: using torch SDPA attention")
            attention = "sdpa"
        else:
            if device.type != "cuda":
                log.info("xformers needs CUDA: using torch SDPA attention")
                attention = "sdpa"
            else:
                unet.enable_xformers_memory_efficient_attention()
                return
    if attention == "sdpa":
        unet.set_attn_processor(AttnProcessor2_0())
    elif attention == "default":
        unet.set_attn_processor(AttnProcessor())
    else:
        raise TIError(f"hardware.attention={attention!r} is unknown", "use sdpa, xformers or default")


@contextlib.contextmanager
def process_settings(hardware: HardwareSettings, device: torch.device) -> Iterator[None]:
    """TF32 matmuls and convolutions for the run (CUDA, `hardware.allow_tf32`), restored afterwards, so a
    run leaves the process as it found it (the API's promise; sweeps in one process)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    if hardware.allow_tf32 and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@dataclass
class Placement:
    """The device, the frozen models' dtype and the hardware settings of one run."""

    device: torch.device
    weight_dtype: torch.dtype
    hardware: HardwareSettings

    @classmethod
    def of(cls, accelerator, hardware: HardwareSettings) -> Placement:
        return cls(accelerator.device, weight_dtype_for(accelerator.mixed_precision), hardware)

    def put(self, module, dtype: torch.dtype | None = None):
        """The module on the device, cast to `dtype` (default: the weight dtype) unless that is fp32."""
        dtype = self.weight_dtype if dtype is None else dtype
        return module.to(self.device) if dtype == torch.float32 else module.to(self.device, dtype=dtype)

    def vae_dtype(self, parts) -> torch.dtype:
        """The dtype the model's family encodes in (SDXL's VAE overflows in fp16 and encodes in fp32)."""
        return parts.family.vae_dtype(parts.vae, self.weight_dtype)

    def place_vae(self, parts) -> torch.dtype:
        """The VAE, frozen, on the device for encoding the training images; returns its dtype."""
        dtype = self.vae_dtype(parts)
        self.put(parts.vae.requires_grad_(False).eval(), dtype)
        return dtype

    def load_unet(self, parts):
        """The UNet (loaded now if deferred) with its weights in the layout `place_unet` gives them."""
        return parts.load_unet(channels_last=self.hardware.channels_last)

    def place_unet(self, unet, training: bool) -> None:
        """The frozen UNet in the weight dtype, with the chosen attention and memory layout; while training,
        gradient checkpointing when asked (only active in train mode; the UNet has no dropout)."""
        unet.requires_grad_(False)
        setup_attention(unet, self.hardware.attention, self.device)
        if self.hardware.channels_last:
            unet.to(memory_format=torch.channels_last)
        if training and self.hardware.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
            unet.train()
        else:
            unet.eval()
        self.put(unet)

    def place_text_encoders(self, encoders, training: bool) -> None:
        """The text encoders stay fp32 (autocast runs them in the mixed precision); what they train (only the
        placeholder rows) the caller decides."""
        for encoder in encoders:
            if training and self.hardware.gradient_checkpointing:
                encoder.gradient_checkpointing_enable()
            encoder.train(training)
            encoder.to(self.device)

    def release_vae(self, parts, keep_decoder: bool, keep_encoder: bool = False) -> None:
        """What nothing needs any more: the encoder once every image is encoded, the decoder when no images
        are generated (kept on the CPU between uses when `offload_idle`)."""
        if not keep_decoder:
            parts.vae.decoder = None
            parts.vae.post_quant_conv = None
        if keep_encoder:
            return
        parts.vae.encoder = None
        parts.vae.quant_conv = None
        if not keep_decoder:
            parts.vae = None
        elif self.hardware.offload_idle:
            parts.vae.to("cpu")  # validation brings it back for generation
