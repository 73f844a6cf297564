"""Prompt sets that put the concept in new contexts: what CLIP-T scores, and what CLIP-I/DINO look at.

Objects: the 25 object prompts of DreamBench (Ruiz et al. 2022, DreamBooth), checked against
google/dreambooth `dataset/prompts_and_classes.txt`. There, "{0} {1}" is the unique token and the
class word; textual inversion has one word for both, the placeholder, so `{}` stands for it.
Styles: DreamBench has none. Ours: 25 subjects across people, animals, objects and places in the style,
in the same simple form, so that CLIP-T measures whether the subject survives the style.
"""

from __future__ import annotations

from ..errors import TIError

DREAMBENCH_OBJECT_PROMPTS = (
    "a {} in the jungle",
    "a {} in the snow",
    "a {} on the beach",
    "a {} on a cobblestone street",
    "a {} on top of pink fabric",
    "a {} on top of a wooden floor",
    "a {} with a city in the background",
    "a {} with a mountain in the background",
    "a {} with a blue house in the background",
    "a {} on top of a purple rug in a forest",
    "a {} with a wheat field in the background",
    "a {} with a tree and autumn leaves in the background",
    "a {} with the Eiffel Tower in the background",
    "a {} floating on top of water",
    "a {} floating in an ocean of milk",
    "a {} on top of green grass with sunflowers around it",
    "a {} on top of a mirror",
    "a {} on top of the sidewalk in a crowded street",
    "a {} on top of a dirt road",
    "a {} on top of a white rug",
    "a red {}",
    "a purple {}",
    "a shiny {}",
    "a wet {}",
    "a cube shaped {}",
)

STYLE_PROMPTS = (
    "a city in the style of {}",
    "a dog in the style of {}",
    "a cat in the style of {}",
    "a portrait of a woman in the style of {}",
    "a portrait of an old man in the style of {}",
    "a house in the style of {}",
    "a mountain landscape in the style of {}",
    "a bowl of fruit in the style of {}",
    "a car in the style of {}",
    "a horse in the style of {}",
    "a beach at sunset in the style of {}",
    "a forest in the style of {}",
    "a bird on a branch in the style of {}",
    "a cup of coffee in the style of {}",
    "a castle in the style of {}",
    "a boat on a lake in the style of {}",
    "a robot in the style of {}",
    "a bridge over a river in the style of {}",
    "a vase of flowers in the style of {}",
    "a child playing in the snow in the style of {}",
    "a street at night in the style of {}",
    "an owl in the style of {}",
    "a lighthouse in the style of {}",
    "a bicycle in the style of {}",
    "the Eiffel Tower in the style of {}",
)


def prompt_templates(prompts, learnable_property: str, num_prompts: int | None = None) -> list[str]:
    """The templates (each with one `{}` for the concept): the protocol's set or the user's list."""
    if prompts == "dreambench":
        templates = list(DREAMBENCH_OBJECT_PROMPTS if learnable_property == "object" else STYLE_PROMPTS)
    elif prompts == "toyworld":  # new backgrounds and positions, in words the toy world model knows
        from ..toyworld.world import CONTEXTS

        templates = list(CONTEXTS)
    elif isinstance(prompts, str):
        raise TIError(f"evaluation.prompts={prompts!r} is unknown",
                      "use dreambench, toyworld or a list of prompts with {}")
    else:
        templates = [str(p) for p in prompts]
        bad = [p for p in templates if p.count("{}") != 1]
        if not templates or bad:
            raise TIError(f"evaluation.prompts: {bad[0]!r} has no single {{}} for the concept" if bad
                          else "evaluation.prompts is empty",
                          "write each prompt with one {} where the concept goes, e.g. 'a {} on the beach'")
    return templates[:num_prompts] if num_prompts else templates
