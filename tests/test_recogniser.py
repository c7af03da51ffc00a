"""The shipped condition recogniser on real held-out clips (rendered, H.264-encoded, decoded)."""

import numpy as np
import pytest

from vap.datasets.synth import CONDITIONS, SYNTH_CATEGORIES
from vap.errors import ModelError
from vap.evaluation.recogniser import (
    RECIPE,
    accuracy_report,
    load_recogniser,
    recipe_key,
    synth_clips,
)

# Synth seed 7: training drew seed 1 (RECIPE["seed"]); its own held-out report (the same seed,
# later clips) measured 97.9 % clean, 98.4 % blurred and 96.4 % on toy-VAE round trips
# (weights/recogniser.json). 48 clips give steps of ~2 %: the floor leaves room for a clip or three of another scene draw.
FLOOR = 0.90


@pytest.fixture(scope="module")
def rec():
    return load_recogniser()


@pytest.fixture(scope="module")
def held_out():
    return synth_clips(7, 2, [9, 17], [32], 8.0)


def test_the_shipped_recogniser_names_held_out_clips(rec, held_out):
    clips, labels = held_out
    report = accuracy_report(rec, clips, labels)
    assert report["overall"] >= FLOOR, report
    # 96 clips, 24 a category; the weakest category measured on such seed-7 clips is style
    # (87.5 %, docs/CLAIMS.md §1): 0.75 leaves three more misses in one category
    assert min(report["per_category"].values()) >= 0.75, report


def test_the_shipped_recogniser_names_toy_vae_round_trips(rec, held_out):
    """What `vap eval` judges is decoded by the toy VAE: the judge must read its round trips.
    On these 48: 89.6 % (motion 83 %); the judge trained without round trips named 60 % (motion 42 %)."""
    from vap.evaluation.recogniser import toy_roundtrip

    clips, labels = held_out
    report = accuracy_report(rec, toy_roundtrip(clips), labels)
    # the target for round trips; measured 89.6 % overall and 83 % on motion (docs/CLAIMS.md §1)
    assert report["overall"] >= 0.80, report
    assert report["per_category"]["motion"] >= 0.70, report


def test_the_api_others_code_against(rec, held_out):
    assert rec.conditions == list(CONDITIONS) and rec.category_of == SYNTH_CATEGORIES
    clips, _ = held_out
    # Any frame count and size: resampled inside.
    big = np.repeat(np.repeat(clips[0][None], 2, axis=2), 2, axis=3)
    probs = rec.predict_proba(np.concatenate([big[:, :13]] * 3))
    assert probs.shape == (3, len(CONDITIONS)) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_the_shipped_weights_come_from_the_current_recipe(rec):
    import json

    from vap.evaluation.recogniser import CONFIG, SHIPPED

    assert json.loads((SHIPPED / CONFIG).read_text())["key"] == recipe_key(RECIPE), \
        "RECIPE changed: rebuild with `vap model recogniser platform/evaluation/weights`"
    assert recipe_key({**RECIPE, "epochs": RECIPE["epochs"] + 1}) != recipe_key(RECIPE)


def test_a_folder_without_a_recogniser_is_one_clear_error(tmp_path):
    with pytest.raises(ModelError, match="vap model recogniser"):
        load_recogniser(tmp_path)
