"""The workshop's quality command: the judge it measures the toy world with."""

import pytest

from ti_experiments.toyworld import shipped

pytestmark = pytest.mark.skipif(not (shipped.JUDGE_DIR / "attributes.safetensors").is_file(),
                                reason="the toy world's weights are not built (python -m ti_experiments_dev.pretrain)")


def test_the_judge_names_every_attribute_of_fresh_renders():
    from ti_experiments.toyworld.judge import Judge
    from ti_experiments_dev.quality import judge_figures

    accuracy = judge_figures(Judge(), count=300, seed=7)
    assert min(accuracy.values()) >= 0.9, accuracy
