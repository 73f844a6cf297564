"""A tiny Stable-Diffusion-format model, built offline and bit-identically every time.

Tests and smoke runs need a real diffusers checkpoint (the same folder layout, the same
classes, the same code paths as SD 1.x) but must not reach the Hugging Face Hub and must run
in seconds on a CPU.  So the project builds one itself: the component shapes of diffusers' own
tiny test pipeline, weights drawn from fixed seeds, and a real `CLIPTokenizer` whose byte-level
BPE vocabulary is learned here from a built-in word list.  Because the build is deterministic,
two machines (or two runs) that build the same `TINY_MODEL_VERSION` get the same bytes, so
results obtained with it are comparable and the cache never goes stale silently.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import torch

from ..data.templates import OBJECT_TEMPLATES, STYLE_TEMPLATES
from ..records.files import atomic_dir

# Bump whenever anything below changes the bytes written: it names the cache folder, so an old
# build is never mistaken for a new one.
TINY_MODEL_VERSION = "3"

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
MODEL_MAX_LENGTH = 77

# Words people use as initializer tokens or in validation prompts, plus common English filler,
# so that hand-written prompts also tokenize mostly into whole words.
_EXTRA_WORDS = """
big toy cat dog train object style painting art sculpture figure doll car beach forest city
mountain red blue green yellow black white orange purple pink brown gray grey gold silver
person man woman boy girl child baby face portrait people friend family
house home room table chair bed door window wall floor roof garden park street road bridge
tower castle church building town village river lake sea ocean water sky sun moon star cloud
rain snow tree flower grass leaf rock stone sand field hill desert island night day morning
evening light shadow fire ice wood metal glass paper plastic cloth
bird fish horse cow pig sheep lion tiger bear wolf fox rabbit mouse duck owl frog monkey
elephant dragon robot monster animal pet
cup mug bowl plate bottle vase box bag hat shoe shirt dress coat book pen clock lamp phone
computer camera ball bike boat ship plane truck bus wheel teddy plush statue pot
apple banana cake bread pizza coffee tea food fruit candy
old new young little tiny huge tall short long round square soft hard happy sad funny cute
pretty beautiful ugly fancy simple plain colorful shiny wooden golden
drawing sketch illustration watercolor oil canvas poster cartoon anime comic render model
image picture photograph shot view scene landscape background detail texture pattern shape
color colour design pixel digital realistic abstract modern classic vintage retro
is are was be been being has have had do does did will would can could should may might
and or but not no yes with without on at by for from to into over under near behind front
top bottom left right side back inside outside next above below between around through
this that these those it its he she they we you i me him her them us our your their his
who what where when why how which there here
very more most less some many much all any each every other another same different
an as if then than so too also just only even still again once
make made take took see saw look looking show shown hold holding sit sitting stand standing
walk walking run running play playing wear wearing eat eating fly flying swim swimming
first second third two three four five ten hundred
high low full empty open closed hot cold warm wet dry fast slow
zoom focus sharp blur blurry quality best resolution photorealistic hd
""".split()


def _bytes_to_unicode() -> dict[int, str]:
    """Map each of the 256 bytes to a printable character, as CLIP's byte-level BPE does.

    Printable Latin-1 bytes stand for themselves; the others are shifted to code points from
    256 on, so that no byte becomes whitespace or a control character in vocab.json.
    """
    printable = set(range(ord("!"), ord("~") + 1))
    printable |= set(range(ord("¡"), ord("¬") + 1))
    printable |= set(range(ord("®"), ord("ÿ") + 1))
    mapping: dict[int, str] = {}
    shift = 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + shift)
            shift += 1
    # CLIP orders its base vocabulary printable bytes first, then the shifted ones.
    order = sorted(printable) + [b for b in range(256) if b not in printable]
    return {byte: mapping[byte] for byte in order}


def tokenizer_words() -> list[str]:
    """The words the tiny tokenizer keeps whole: sorted, so the BPE training is reproducible."""
    from ..toyworld.world import WORDS as TOY_WORLD_WORDS

    words: set[str] = set(_EXTRA_WORDS) | set(TOY_WORLD_WORDS)
    for template in OBJECT_TEMPLATES + STYLE_TEMPLATES:
        # CLIP's pre-tokenizer splits "close-up" into "close", "-", "up"; keep letter runs.
        for chunk in template.replace("{}", " ").replace("-", " ").split():
            words.add(chunk)
    return sorted(w.lower() for w in words)


def _learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Learn BPE merges until every word is one symbol.

    Each word counts once; the most frequent adjacent pair is merged first, ties going to the
    lexicographically smallest pair, so the result depends only on the word list.
    """
    byte_chars = _bytes_to_unicode()
    segmented: list[list[str]] = []
    for word in words:
        symbols = [byte_chars[b] for b in word.encode("utf-8")]
        symbols[-1] += END_OF_WORD
        segmented.append(symbols)

    # Pair counts are updated only for the words a merge touches: recounting everything after
    # each of the ~800 merges would dominate the build time.
    counts: Counter[tuple[str, str]] = Counter()
    for symbols in segmented:
        counts.update(zip(symbols, symbols[1:]))
    merges: list[tuple[str, str]] = []
    while counts:
        top = max(counts.values())
        best = min(pair for pair, count in counts.items() if count == top)
        merges.append(best)
        left, right = best
        joined = left + right
        for symbols in segmented:
            if left not in symbols or len(symbols) < 2:
                continue
            pairs_before = Counter(zip(symbols, symbols[1:]))
            if best not in pairs_before:
                continue
            i = 0
            while i < len(symbols) - 1:
                if symbols[i] == left and symbols[i + 1] == right:
                    symbols[i : i + 2] = [joined]
                i += 1
            counts.subtract(pairs_before)
            counts.update(zip(symbols, symbols[1:]))
        counts = +counts  # drop pairs that no longer occur
    return merges


def write_tokenizer_files(out_dir: Path, vocab_size: int | None = None) -> None:
    """Write vocab.json and merges.txt in CLIP's layout: bytes, bytes</w>, merges, specials.

    With `vocab_size` (e.g. CLIP's 49408) unused filler entries pad the vocabulary so the specials get
    CLIP's ids and a text encoder of the real shape fits it.
    """
    merges = _learn_merges(tokenizer_words())
    base = list(_bytes_to_unicode().values())
    tokens = base + [c + END_OF_WORD for c in base] + [a + b for a, b in merges]
    if vocab_size is not None:
        tokens += [f"<|unused-{i}|>" for i in range(vocab_size - 2 - len(tokens))]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise AssertionError("duplicate token in the tiny vocabulary")  # a bug in _learn_merges
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (out_dir / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def seeded(seed: int, build):
    """Build a module under a fixed seed without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def build_tiny_model(out_dir: Path) -> None:
    """Build the tiny model and save it in diffusers layout (safetensors) into `out_dir`."""
    # Imported here: they are slow to import and only needed when a build actually happens.
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"refusing to build the tiny model into non-empty {out_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)

    # vocab.json/merges.txt stay in tokenizer/ beside the tokenizer.json that transformers 5
    # writes, as in SD's own folder; loading from them means what is saved is what we learned.
    write_tokenizer_files(out_dir / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(out_dir / "tokenizer", model_max_length=MODEL_MAX_LENGTH)
    pipe = StableDiffusionPipeline(
        vae=_tiny_vae(), text_encoder=_tiny_text_encoder(tokenizer), tokenizer=tokenizer, unet=_tiny_unet(),
        scheduler=_sd_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)


def _tiny_unet():
    from diffusers import UNet2DConditionModel

    return seeded(0, lambda: UNet2DConditionModel(
        sample_size=16,  # 16x16 latents: a 32 px model, as conf/model/tiny.yaml says
        in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    ))


def _tiny_vae():
    from diffusers import AutoencoderKL

    return seeded(1, lambda: AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), latent_channels=4, sample_size=32,
    ))


def _tiny_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=5, num_attention_heads=4,
        max_position_embeddings=MODEL_MAX_LENGTH, layer_norm_eps=1e-5, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return seeded(2, lambda: CLIPTextModel(config))


def _sd_scheduler():
    """Kept in SD's config so a switch to DDIM/PNDM sees the same settings as SD 1.x."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config({
        "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon", "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
    })


class _BuiltElsewhere(Exception):
    """Raised inside `atomic_dir` to drop our copy when another process finished first."""


def ensure_tiny_model(cache_dir: str | os.PathLike) -> Path:
    """Return the cached tiny model's folder, building it first if it is not there yet."""
    return ensure_built(Path(cache_dir).expanduser() / f"tiny-sd-{TINY_MODEL_VERSION}", build_tiny_model)


def ensure_built(target: Path, build) -> Path:
    """`target`, built by `build(folder)` first if it has no model_index.json yet.

    The build goes into a temporary folder that is renamed into place, so a reader never sees
    a half-written model; if another process wins the race, its (identical) copy is used.
    """
    marker = target / "model_index.json"
    if marker.exists():
        return target
    try:
        with atomic_dir(target) as tmp:
            build(tmp)
            if marker.exists():
                raise _BuiltElsewhere  # don't replace a folder someone may be reading
    except _BuiltElsewhere:
        pass
    except OSError:
        # The rename lost a race (target appeared, non-empty, between the check and the rename).
        if not marker.exists():
            raise
    return target
