"""AugmentParams: the augmentation parameters, validated once, on construction, and passed whole through the CLI, the
API, jobs and tasks."""
from __future__ import annotations

import pytest

from lrface.core.params import MAX_HEIGHT, MIN_HEIGHT, AugmentParams
from lrface.service.jobs.params import JobParams


def test_valid_parameters_and_their_synthesis_arguments():
    p = AugmentParams(3, 7, None, 20, 40, True)
    assert p.synthesis() == {"variants": 3, "seed": 7, "height": None, "min_height": 20, "max_height": 40,
                             "canvas": True}
    assert AugmentParams(1, 0, height=MIN_HEIGHT) and AugmentParams(1, 0, height=MAX_HEIGHT)
    assert AugmentParams(seed=2**200).seed == 2**200  # any seed >= 0 (the API returns it as it came)


@pytest.mark.parametrize("kwargs, message", [
    ({"variants": 0}, "variants must be an integer >= 1, not 0"),
    ({"variants": True}, "variants must be an integer >= 1"),
    ({"seed": -1}, "seed must be >= 0, not -1"),
    ({"seed": 1.5}, "seed must be an integer"),
    ({"height": MIN_HEIGHT - 1}, f"height must be within [{MIN_HEIGHT}, {MAX_HEIGHT}] px, not {MIN_HEIGHT - 1}"),
    ({"max_height": MAX_HEIGHT + 1}, "max_height must be within"),
    ({"min_height": 24.5}, "min_height must be an integer"),
    ({"height": 24, "min_height": 20}, "give either height or min_height / max_height, not both"),
    ({"min_height": 40, "max_height": 20}, "min_height (40) must not exceed max_height (20)"),
])
def test_invalid_parameters_are_refused_on_construction(kwargs, message):
    with pytest.raises(ValueError) as err:
        AugmentParams(**kwargs)
    assert message in str(err.value)


def test_a_job_s_parameters_are_augment_parameters_and_round_trip():
    job = JobParams(4, 9, None, None, 30, False)
    assert isinstance(job, AugmentParams) and job.synthesis()["variants"] == 4
    assert JobParams.from_dict(job.as_dict()) == job
    assert job.as_dict() == {"kind": "augment", "variants": 4, "seed": 9, "height": None, "min_height": None,
                             "max_height": 30, "canvas": False}
    embed = JobParams.embedding()
    assert embed.as_dict() == {"kind": "embed", "model": "full"} and JobParams.from_dict({"kind": "embed"}) == embed
    lite = JobParams.embedding("lite")
    assert JobParams.from_dict(lite.as_dict()) == lite and lite.model == "lite"
    with pytest.raises(ValueError):
        JobParams(2, 0, 200)


def test_the_model_checks_what_only_it_knows(synthesizer):
    lo, hi = synthesizer.height_range
    assert synthesizer.check(AugmentParams(1, 0, min_height=lo, max_height=hi))
    if hi < MAX_HEIGHT:  # a range above the model's default upper bound needs both bounds
        with pytest.raises(ValueError, match="give both min_height and max_height"):
            synthesizer.check(AugmentParams(1, 0, min_height=hi + 1))
