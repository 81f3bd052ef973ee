"""Fuzz the manifest parser (`protocol.manifest.Manifest.from_json` / `.read` / `.from_dict`): any JSON or
bytes give a Manifest or a ManifestError whose one-line message names the source; valid manifests
round-trip through to_dict/to_json with a stable content digest, and the digest covers every digested field."""

from __future__ import annotations

import json

import pytest
from fuzzlib import (
    BOMS,
    PATH_KINDS,
    assert_one_line,
    budget,
    manifest_fields,
    manifests,
    place,
    record,
    remark,
    scratch_dir,
    utf8_text,
)
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from protocol.manifest import _UNDIGESTED, Manifest, ManifestError
from tflite_models import bundled_package

pytestmark = pytest.mark.fuzz

SOURCE = "/pkg/manifest.json"
BUNDLED_TEXT = (bundled_package() / "manifest.json").read_text()
FIELDS = list(json.loads(BUNDLED_TEXT))
DIGESTED = [f for f in FIELDS if f not in _UNDIGESTED]

# JSON values of every shape; huge integers (up to Python's 4300-digit conversion limit), NaN and
# infinities (which json.dumps writes as the NaN/Infinity literals).
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(2**70), 2**70), st.floats(), utf8_text,
    st.sampled_from([2**63, 2**63 - 1, -(2**63) - 1, 2**31, 0, -1, 0.0, -0.0, 1e-320, "", "2", "1.0", "NaN",
                     "\u2028", "\x00"]),
    st.integers(0, 4).map(lambda k: [10**308, 10**309, 10**4299, -(10**4299), 2**64][k]),  # (kept out of reprs)
)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(utf8_text, inner, max_size=4),
    max_leaves=10,
)


@st.composite
def mutated_manifest_dict(draw):
    """A valid manifest's dict with fields replaced by any JSON, deleted, or added."""
    data = (draw(manifests(max_items=8)).to_dict() if draw(st.booleans()) else json.loads(BUNDLED_TEXT))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add", "nested"]))
        field = draw(st.sampled_from(FIELDS))
        if op == "replace":
            data[field] = draw(json_values)
        elif op == "delete":
            data.pop(field, None)
        elif op == "add":
            data[draw(st.one_of(utf8_text, st.sampled_from(FIELDS)))] = draw(json_values)
        elif op == "nested" and isinstance(data.get(field), (dict, list)) and data[field]:
            target = data[field]
            if isinstance(target, dict):
                target[draw(st.sampled_from(sorted(target) + ["user_l2", "mechanism", "rounds"]))] = draw(json_values)
            else:
                target[draw(st.integers(0, len(target) - 1))] = draw(json_values)
    return data


def _dump(data) -> str:
    return json.dumps(data, allow_nan=True)


def _deep(depth: int, field: str) -> str:
    data = json.loads(BUNDLED_TEXT)
    data[field] = "@@"
    return _dump(data).replace('"@@"', "[" * depth + "]" * depth)


manifest_texts = st.one_of(
    mutated_manifest_dict().map(_dump),
    json_values.map(_dump),
    st.tuples(st.integers(1, 3000), st.sampled_from(FIELDS)).map(lambda t: _deep(*t)),
    st.integers(1, 100_000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 100_000).map(lambda n: '{"a":' * n + "1" + "}" * n),
)


def _check_accepted(manifest: Manifest) -> None:
    """An accepted manifest is usable: it serialises, round-trips and has a digest."""
    again = Manifest.from_json(manifest.to_json(), source=SOURCE)
    assert again == manifest and again.content_digest() == manifest.content_digest()
    assert len(manifest.dense_index) == manifest.num_items


def _parse(text: str | bytes, source=SOURCE) -> Manifest | None:
    remark(f"manifest text: {text[:600]!r}")
    try:
        manifest = Manifest.from_json(text, source=source)
    except ManifestError as error:
        record("outcome: ManifestError")
        assert_one_line(str(error), names=source)
        assert str(error).startswith(f"{source}: "), str(error)
        return None
    record("outcome: accepted")
    _check_accepted(manifest)
    return manifest


@settings(max_examples=budget(3))
@given(text=manifest_texts)
@example(text='{"format": NaN}')
@example(text=BUNDLED_TEXT.replace('"round": 300', '"round": ' + "9" * 5000))
@example(text=BUNDLED_TEXT.replace('"rating_min": 1.0', '"rating_min": 1e999'))
@example(text=BUNDLED_TEXT.replace('"rating_min": 1.0', '"rating_min": -Infinity'))
@example(text=BUNDLED_TEXT.replace('"dim": 16', '"dim": 16.0'))
@example(text=BUNDLED_TEXT.replace('"dim": 16', '"dim": true'))
@example(text=BUNDLED_TEXT.replace('"item_ids": [0,', '"item_ids": [9223372036854775808,'))
@example(text=BUNDLED_TEXT.replace('"privacy": null', '"privacy": {"epsilon_rdp": 1e400}'))
@example(text=BUNDLED_TEXT.replace('"signatures": [', '"signatures": [[], '))
@example(text="\ufeff" + BUNDLED_TEXT)
@example(text='{"a\\nb": 1}')
def test_any_json_text_gives_a_manifest_or_a_one_line_error(text):
    _parse(text)


@st.composite
def manifest_bytes(draw):
    text = draw(st.one_of(st.just(BUNDLED_TEXT), manifests(max_items=6).map(lambda m: m.to_json()),
                          mutated_manifest_dict().map(_dump)))
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-16", "utf-16-le", "utf-32", "latin-1", "cp1252"]))
    data = text.encode(encoding, "replace")
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["bom", "insert", "delete", "flip", "truncate"]))
        pos = draw(st.integers(0, len(data)))
        if op == "bom":
            data = draw(st.sampled_from(BOMS)) + data
        elif op == "insert":
            data = data[:pos] + draw(st.binary(min_size=1, max_size=6)) + data[pos:]
        elif op == "delete":
            data = data[:pos] + data[pos + draw(st.integers(1, 30)):]
        elif op == "flip" and data:
            k = min(pos, len(data) - 1)
            data = data[:k] + bytes([data[k] ^ (1 << draw(st.integers(0, 7)))]) + data[k + 1:]
        elif op == "truncate":
            data = data[:pos]
    return data


@settings(max_examples=budget(2))
@given(data=st.one_of(manifest_bytes(), st.binary(max_size=200)))
@example(data=b"\xff\xfe{\x00}\x00")
@example(data=b'{"model_version": "\xff"}')
@example(data=b"")
def test_any_bytes_from_a_file_give_a_manifest_or_a_one_line_error_naming_it(data):
    with scratch_dir() as folder:
        path = folder / "package" / "manifest.json"
        path.parent.mkdir()
        path.write_bytes(data)
        try:
            manifest = Manifest.read(path)
        except ManifestError as error:
            record("outcome: ManifestError")
            assert_one_line(str(error), names=path)
            return
        record("outcome: accepted")
        _check_accepted(manifest)


@settings(max_examples=budget(0.3, minimum=len(PATH_KINDS)))
@given(kind=st.sampled_from(PATH_KINDS))
def test_a_manifest_path_of_any_kind_is_refused_naming_it(kind):
    with scratch_dir() as folder:
        path = place(folder / "manifest.json", kind)
        with pytest.raises(ManifestError) as refused:
            Manifest.read(path)
        assert_one_line(str(refused.value), names=path)


@settings(max_examples=budget(1))
@given(data=st.one_of(json_values, mutated_manifest_dict()))
def test_from_dict_of_any_json_value_gives_a_manifest_or_manifesterror(data):
    try:
        manifest = Manifest.from_dict(data, source=SOURCE)
    except ManifestError as error:
        assert_one_line(str(error), names=SOURCE)
        return
    _check_accepted(manifest)


# ---------------------------------------------------------------------------------------------
# Round trip and digest

@settings(max_examples=budget(1))
@given(manifest=manifests())
def test_round_trip_keeps_the_manifest_and_its_digest(manifest):
    digest = manifest.content_digest()
    assert len(digest) == 32
    via_dict = Manifest.from_dict(manifest.to_dict())
    assert via_dict == manifest and via_dict.content_digest() == digest
    via_json = Manifest.from_json(manifest.to_json(), source=SOURCE)
    assert via_json == manifest and via_json.content_digest() == digest
    via_bytes = Manifest.from_json(manifest.to_json().encode("utf-8"), source=SOURCE)
    assert via_bytes.to_dict() == manifest.to_dict() and via_bytes.content_digest() == digest
    # A dict round trip through JSON again (the exporter writes to_json, the device reads it).
    assert Manifest.from_dict(json.loads(json.dumps(manifest.to_dict()))).content_digest() == digest


# Fields that must change together to stay valid.
_GROUPS = [("num_items", "item_ids", "item_titles"), ("rating_min", "rating_max")]


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@settings(max_examples=budget(2))
@given(first=manifest_fields(max_items=6), second=manifest_fields(max_items=6),
       field=st.sampled_from([f for f in FIELDS if f != "format"]))
def test_the_digest_changes_exactly_when_a_digested_field_changes(first, second, field):
    base = Manifest(**first)
    group = next((g for g in _GROUPS if field in g), (field,))
    changed_fields = dict(first, **{f: second[f] for f in group})
    try:
        changed = Manifest(**changed_fields)
    except ManifestError:
        assume(False)
    differs = any(_canonical(base.to_dict()[f]) != _canonical(changed.to_dict()[f]) for f in group)
    if field in _UNDIGESTED:
        assert changed.content_digest() == base.content_digest()
    elif differs:
        record("digested field changed")
        assert changed.content_digest() != base.content_digest(), f"{field} changed, the digest did not"
    else:
        assert changed.content_digest() == base.content_digest()


# ---------------------------------------------------------------------------------------------
# Regression test: a product bug this tier found (fixed), with its minimal inputs

@pytest.mark.parametrize("text,shown", [
    ('{"a\\nb": 1}', "unknown manifest fields: 'a\\nb'"),
    (BUNDLED_TEXT.replace('"hyperparameters": {', '"hyperparameters": {"x\\ny": null, '),
     "hyperparameters 'x\\ny' must be finite numbers"),
    (BUNDLED_TEXT.replace('"privacy": null', '"privacy": {"x\\ny": 1}'), "unknown privacy fields: 'x\\ny'"),
], ids=["unknown-field", "hyperparameter", "privacy-field"])
def test_a_key_with_a_line_break_is_quoted_in_a_one_line_error(text, shown):
    """Field names were printed unquoted, so a key holding a line break made a two-line error."""
    with pytest.raises(ManifestError) as refused:
        Manifest.from_json(text, source=SOURCE)
    assert str(refused.value) == f"{SOURCE}: {shown}"
    assert_one_line(str(refused.value), names=SOURCE)
