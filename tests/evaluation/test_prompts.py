"""The protocol's prompt sets: DreamBench's 25 object prompts, our 25 style prompts, user lists."""

import pytest

from ti_experiments.errors import TIError
from ti_experiments.evaluation.prompts import DREAMBENCH_OBJECT_PROMPTS, STYLE_PROMPTS, prompt_templates


def test_sets_have_25_prompts_with_one_slot_each():
    for prompts in (DREAMBENCH_OBJECT_PROMPTS, STYLE_PROMPTS):
        assert len(prompts) == len(set(prompts)) == 25
        assert all(p.count("{}") == 1 for p in prompts)
    assert DREAMBENCH_OBJECT_PROMPTS[0] == "a {} in the jungle" and DREAMBENCH_OBJECT_PROMPTS[-1] == "a cube shaped {}"


def test_choice_by_property_count_and_user_list():
    assert prompt_templates("dreambench", "object") == list(DREAMBENCH_OBJECT_PROMPTS)
    assert prompt_templates("dreambench", "style", 3) == list(STYLE_PROMPTS[:3])
    assert prompt_templates(["a {} on the moon"], "object") == ["a {} on the moon"]
    with pytest.raises(TIError, match="single"):
        prompt_templates(["a photo of the moon"], "object")
    with pytest.raises(TIError, match="unknown"):
        prompt_templates("drembench", "object")
