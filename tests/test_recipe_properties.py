"""Property test: any mapping handed to the recipe builder gives a Recipe or one clear RecipeError.

Random nested values under real recipe keys (and junk keys), as a downloaded or hand-edited
recipe might hold after YAML parsing; never a TypeError, KeyError or other raw exception.
"""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plmtune.config import DataConfig, ModelConfig, TrainConfig
from plmtune.errors import PlmtuneError
from plmtune.loading import build_recipe, top_keys
from plmtune.techniques import list_techniques

SECTION_KEYS = {"model": [f.name for f in dataclasses.fields(ModelConfig)],
                "data": [f.name for f in dataclasses.fields(DataConfig)],
                "train": [f.name for f in dataclasses.fields(TrainConfig)]}

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(list_techniques()))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=8)


@st.composite
def sections(draw, name):
    keys = st.one_of(st.sampled_from(SECTION_KEYS[name]), st.text(max_size=8))
    return draw(st.one_of(values, st.dictionaries(keys, values, max_size=4)))


@st.composite
def technique_lists(draw):
    entry = st.one_of(values, st.fixed_dictionaries({"name": st.one_of(st.sampled_from(list_techniques()), values)},
                                                    optional={"decay": values, "lam": values, "p": values}))
    return draw(st.one_of(values, st.lists(entry, max_size=3)))


@st.composite
def recipes(draw):
    raw = {}
    for key in draw(st.lists(st.one_of(st.sampled_from(list(top_keys())), st.text(max_size=6)), max_size=6)):
        if key in SECTION_KEYS:
            raw[key] = draw(sections(key))
        elif key == "techniques":
            raw[key] = draw(technique_lists())
        else:
            raw[key] = draw(values)
    return draw(st.one_of(st.just(raw), values))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recipes())
def test_random_recipe_mappings_build_or_fail_with_one_paragraph(raw):
    try:
        build_recipe(raw)
    except PlmtuneError as err:
        message = str(err)
        assert message and "\n" not in message.strip(), message
