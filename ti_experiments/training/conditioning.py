"""What the UNet is conditioned on for a training batch, for SD 1.x/2.x and SDXL, in one place.

SD 1.x/2.x: the text encoder's last hidden state. SDXL, as its pipelines encode a prompt: the
penultimate hidden states of both text encoders concatenated on the feature axis, the second
encoder's projected pooled output as `text_embeds`, and each image's six size and crop numbers
(original height and width, crop top and left, target height and width) as `time_ids`.
Training and any loss computed on held-out images call this, so both condition the same way.
"""

from __future__ import annotations

import torch


def text_conditioning(parts, text_encoder, batch: dict, weight_dtype: torch.dtype, device
                      ) -> tuple[torch.Tensor, dict | None]:
    """(encoder_hidden_states, added_cond_kwargs) for `parts.unet`; added_cond_kwargs is None but for SDXL.

    `text_encoder` is the (possibly Accelerate-wrapped) first encoder; SDXL's second is `parts.text_encoder_2`.
    """
    input_ids = batch["input_ids"].to(device)
    text_encoder_2 = getattr(parts, "text_encoder_2", None)
    if text_encoder_2 is None:
        return text_encoder(input_ids)[0].to(weight_dtype), None
    first = text_encoder(input_ids, output_hidden_states=True)
    second = text_encoder_2(batch["input_ids_2"].to(device), output_hidden_states=True)
    hidden = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1).to(weight_dtype)
    # time_ids stay fp32: the UNet turns them into sinusoidal features in fp32 anyway.
    added = {"text_embeds": second.text_embeds.to(weight_dtype), "time_ids": batch["time_ids"].to(device)}
    return hidden, added
