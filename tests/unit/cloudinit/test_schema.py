"""Property tests: no traceback ever; every invalid document gets a located error."""

from __future__ import annotations

import json

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cos.cloudinit.loader import load_text
from cos.cloudinit.schema import STEP, json_schema

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5000), st.text(max_size=8))
keys = st.one_of(st.sampled_from(sorted(STEP.fields)), st.text(min_size=1, max_size=8))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)),
    max_leaves=8,
)
steps = st.dictionaries(keys, values, max_size=4)
documents = st.fixed_dictionaries(
    {
        "stages": st.dictionaries(
            st.sampled_from(["boot", "fs", "x"]), st.lists(steps, max_size=3), max_size=2
        )
    }
)


@settings(max_examples=300, deadline=None)
@given(documents)
def test_any_document_loads_or_errors_with_location(doc: dict[str, object]) -> None:
    text = yaml.safe_dump(doc)
    r = load_text(text, "gen.yaml")
    assert bool(r.documents) != bool(r.errors)
    for e in r.errors:
        assert e.mark is not None and e.mark.source == "gen.yaml" and e.mark.line >= 1
        assert e.path


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_arbitrary_text_never_raises(text: str) -> None:
    r = load_text(text, "t.yaml")
    for e in r.errors:
        assert str(e)


def test_json_schema_is_strict_and_serialisable() -> None:
    s = json_schema()
    json.dumps(s)
    step = s["properties"]["stages"]["additionalProperties"]["items"]
    assert step["additionalProperties"] is False and "files" in step["properties"]
    assert step["properties"]["files"]["items"]["properties"]["permissions"]["type"] == "integer"


def test_published_schema_matches_the_code() -> None:
    from pathlib import Path

    published = Path(__file__).parents[3] / "docs/cloud-config.schema.json"
    assert json.loads(published.read_text()) == json_schema(), "regenerate with: make docs"
