"""Strategies and checks shared by the fuzz tests (hostile tokens, mutated files, one-line errors)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from hypothesis import event, note, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Line ends a valid file may use: "\n", "\r\n" and a lone "\r" (old Mac); the data loaders and the
# device's ratings importer read all three.
VALID_EOLS = ["\n", "\r\n", "\r"]
# Python refuses to convert decimal strings of more than 4300 digits to int (ValueError); fields that
# long are generated on purpose (the loaders must refuse them with a DataError, or read leading zeros).
INT_DIGIT_LIMIT = 4300


def budget(scale: float = 1.0, *, minimum: int = 5) -> int:
    """max_examples for a test: `scale` times the profile's (for tests much slower than the rest)."""
    return max(minimum, int(settings().max_examples * scale))


# ---------------------------------------------------------------------------------------------
# Tokens and text

HOSTILE_TOKENS = [
    "", " ", "  ", "0", "-0", "+0", "00", "1", "-1", "+1", "5", "3", "4.5", "0.5", "1.0", "5.0", "1e0", "5e-0",
    "1e3", "-1e3", "1e308", "1e309", "-1e309", "4.9e-324", "nan", "NaN", "-nan", "inf", "-inf", "+inf",
    "Infinity", "-Infinity", "infinity", str(INT64_MAX), str(INT64_MAX + 1), str(INT64_MIN), str(INT64_MIN - 1),
    str(2**64), str(10**30), "9" * 400, "0" * 1000 + "1", "9" * (INT_DIGIT_LIMIT + 1), "0x10", "0b1", "0o7", "1_000",
    "1__0", "1,5", "1.5.5",
    "١٢", "５", "²", "Ⅻ", "\x00", "\ufeff", "\ufeff1", "\t", "|", ",", '"', '""', "'", "\\", "\r", "\n", "\r\n",
    "\x85", "\u2028", "é", "\x7f", "true", "false", "None", "null", "[]", "{}", " 1 ", "1 2", "--", "-", "+",
    ".", "e", "1e", "e1", "∞", "\u00a0", "\u00a01", "1\u00a0", "=1+1", "%s%n", "${HOME}", "../..", "/", "~",
]

# Text that is encodable in UTF-8 (no lone surrogates).
utf8_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
latin1_text = st.text(alphabet=st.characters(max_codepoint=255), max_size=30)


def int_tokens(low: int = INT64_MIN - 10, high: int = INT64_MAX + 10) -> st.SearchStrategy[str]:
    return st.one_of(st.integers(0, 50), st.integers(low, high), st.integers()).map(str)


float_tokens = st.floats(allow_nan=True, allow_infinity=True).map(repr)

tokens = st.one_of(
    st.sampled_from(HOSTILE_TOKENS),
    int_tokens(),
    float_tokens,
    utf8_text,
)


# ---------------------------------------------------------------------------------------------
# Files: valid tables, then structural and byte-level mutations

BOMS = [b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff", b"\xef\xbb\xbf\xef\xbb\xbf"]
_LONG_LINE_CHARS = (64 * 1024, 4096)  # the line limits of the data loaders and of the device importer


@st.composite
def mutated_table(draw, rows: Sequence[Sequence[str]], *, sep: str, encoding: str,
                  max_mutations: int = 4) -> bytes:
    """A delimited file of `rows` with 0..max_mutations structural and 0..2 byte-level mutations."""
    rows = [list(r) for r in rows]
    eol = draw(st.sampled_from(VALID_EOLS))
    # Few mutations are more likely than many, so that a good share of files still load.
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 1, 2, max_mutations]))):
        op = draw(st.sampled_from([
            "token", "token", "token", "drop_field", "add_field", "dup_row", "blank_row", "swap_rows",
            "drop_row", "quote", "long_field", "sep_in_field", "whitespace", "long_number",
        ]))
        if not rows and op not in ("blank_row", "add_field"):
            continue
        i = draw(st.integers(0, max(0, len(rows) - 1)))
        if op == "token" and rows[i]:
            j = draw(st.integers(0, len(rows[i]) - 1))
            rows[i][j] = draw(tokens)
        elif op == "drop_field" and rows[i]:
            del rows[i][draw(st.integers(0, len(rows[i]) - 1))]
        elif op == "add_field":
            if not rows:
                rows.append([])
            rows[i].insert(draw(st.integers(0, len(rows[i]))), draw(tokens))
        elif op == "dup_row":
            rows.insert(draw(st.integers(0, len(rows))), list(rows[i]))
        elif op == "blank_row":
            rows.insert(draw(st.integers(0, len(rows))), [draw(st.sampled_from(["", " ", "\t", sep * 3]))])
        elif op == "swap_rows":
            k = draw(st.integers(0, len(rows) - 1))
            rows[i], rows[k] = rows[k], rows[i]
        elif op == "drop_row":
            del rows[i]
        elif op == "quote" and rows[i]:
            j = draw(st.integers(0, len(rows[i]) - 1))
            rows[i][j] = draw(st.sampled_from(['"{}"', '"{}', '{}"', '"{}""', "'{}'", '""{}'])).format(rows[i][j])
        elif op == "long_field" and rows[i]:
            j = draw(st.integers(0, len(rows[i]) - 1))
            limit = draw(st.sampled_from(_LONG_LINE_CHARS))
            size = draw(st.sampled_from([limit - 8, limit, limit + 1, 2 * limit, INT_DIGIT_LIMIT + 1]))
            rows[i][j] = draw(st.sampled_from(["x", "1.", "7", " ", "\u00e9", '"'])) * size
        elif op == "long_number" and rows[i]:
            j = draw(st.integers(0, len(rows[i]) - 1))
            digits = draw(st.sampled_from([19, 20, 309, INT_DIGIT_LIMIT, INT_DIGIT_LIMIT + 1, 5000]))
            rows[i][j] = draw(st.sampled_from(["", "-", "+", "0."])) + "9" * digits
        elif op == "sep_in_field" and rows[i]:
            j = draw(st.integers(0, len(rows[i]) - 1))
            rows[i][j] = rows[i][j] + draw(st.sampled_from([sep, "\t", ",", "|", ";", " "])) + draw(tokens)
        elif op == "whitespace" and rows[i]:
            j = draw(st.integers(0, len(rows[i]) - 1))
            pad = draw(st.sampled_from([" ", "\t", "\u00a0", "\x0b", "\x0c"]))
            rows[i][j] = pad + rows[i][j] + pad
    text = eol.join(sep.join(r) for r in rows) + draw(st.sampled_from(["", eol, eol * 2, eol + " "]))
    data = text.encode(encoding, "surrogatepass") if encoding != "latin-1" else text.encode("latin-1", "replace")
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        op = draw(st.sampled_from(["bom", "insert", "delete", "nul", "truncate", "flip"]))
        pos = draw(st.integers(0, len(data)))
        if op == "bom":
            data = draw(st.sampled_from(BOMS)) + data
        elif op == "insert":
            data = data[:pos] + draw(st.binary(min_size=1, max_size=8)) + data[pos:]
        elif op == "delete":
            data = data[:pos] + data[pos + draw(st.integers(1, 8)):]
        elif op == "nul":
            data = data[:pos] + b"\x00" + data[pos:]
        elif op == "truncate":
            data = data[:pos]
        elif op == "flip" and data:
            k = min(pos, len(data) - 1)
            data = data[:k] + bytes([data[k] ^ (1 << draw(st.integers(0, 7)))]) + data[k + 1:]
    return data


def whole_file_garbage() -> st.SearchStrategy[bytes]:
    """Content that is not a table at all."""
    return st.one_of(
        st.binary(max_size=300),
        st.sampled_from([b"", b"\n", b"\r\n\r\n", b"\x00" * 10, b"\xff\xfe", b"\xef\xbb\xbf", b" \t \n",
                         b"\xef\xbb\xbf\n", "\u2028".encode(), b'"' * 3, b'"\n' * 3]),
        utf8_text.map(lambda t: t.encode("utf-8")),
        st.text(max_size=30).map(lambda t: t.encode("utf-16")),
    )


# ---------------------------------------------------------------------------------------------
# Paths of every kind (created under `root`)

PATH_KINDS = ("missing", "missing_parent", "file", "empty_file", "fifo", "empty_dir", "junk_dir", "dangling",
              "loop", "under_file", "dev_null")
# Kinds that put something (or nothing) at exactly the path asked for.
FILE_KINDS = ("missing", "file", "empty_file", "fifo", "empty_dir", "junk_dir", "dangling", "loop")


def place(path: Path, kind: str) -> Path:
    """Make `path` a thing of the given kind; returns the path to hand to the code under test
    (`missing_parent`, `under_file` and `dev_null` name another path)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "missing":
        return path
    if kind == "missing_parent":
        return path / "no-such-folder" / "x"
    if kind == "dev_null":
        return Path(os.devnull)
    if os.path.lexists(path):
        return path / "x" if kind == "under_file" else path
    if kind in ("file", "under_file"):
        path.write_text("not what you expected\n")
    elif kind == "empty_file":
        path.write_bytes(b"")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "empty_dir":
        path.mkdir()
    elif kind == "junk_dir":
        path.mkdir()
        (path / "junk.txt").write_text("junk\n")
    elif kind == "dangling":
        path.symlink_to(path.parent / f".nowhere-{path.name}")
    elif kind == "loop":
        path.symlink_to(path)
    else:
        raise ValueError(kind)
    return path / "x" if kind == "under_file" else path


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A fresh temporary folder for one example (hypothesis runs many examples per test function)."""
    path = Path(tempfile.mkdtemp(prefix="fedrec-fuzz-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Checks

def record(outcome: str) -> None:
    """`hypothesis.event`, also from a helper that a plain (non-@given) regression test calls:
    `event` raises InvalidArgument outside a @given test, which would fail the test for a harness
    reason rather than for what it checks."""
    with suppress(InvalidArgument):
        event(outcome)


def remark(text: str) -> None:
    """`hypothesis.note`, also outside a @given test (where it is dropped)."""
    with suppress(InvalidArgument):
        note(text)


def assert_one_line(message: str, *, names: str | Path | None = None) -> None:
    """An error message that is one line and (optionally) names a file."""
    assert message, "empty error message"
    assert "\n" not in message and "\r" not in message, f"error message is not one line: {message!r}"
    if names is not None:
        assert str(names) in message, f"error message does not name {names}: {message!r}"


def count_lines(data: bytes) -> int:
    """Lines as Python's universal-newline reader counts them (an upper bound for an error's line)."""
    return len(re.split(rb"\r\n|\r|\n", data))


# ---------------------------------------------------------------------------------------------
# Valid manifests (no model file needed: the importer and the manifest parser only read the manifest)

def _manifest_module():
    from protocol import manifest

    return manifest


@st.composite
def manifest_fields(draw, *, max_items: int = 40) -> dict:
    """Keyword arguments of a valid `protocol.manifest.Manifest`."""
    m = _manifest_module()
    item_ids = draw(st.lists(st.one_of(st.integers(0, 500), st.integers(INT64_MIN, INT64_MAX)),
                             min_size=1, max_size=max_items, unique=True))
    low, high = draw(st.one_of(
        st.sampled_from([(1.0, 5.0), (0.5, 5.0), (1, 5), (-1.0, 1.0), (0.0, 10.0)]),
        st.tuples(st.floats(-1e6, 1e6), st.floats(1e-3, 1e6)).map(lambda p: (p[0], p[0] + p[1])),
    ))
    finite = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False))
    hyper = {k: draw(finite) for k in m.HYPERPARAMETER_KEYS}
    hyper.update(draw(st.dictionaries(utf8_text, finite, max_size=2)))
    nonneg = st.one_of(st.none(), st.integers(0, 10**6), st.floats(0, 1e300))
    privacy = draw(st.one_of(st.none(), st.fixed_dictionaries({}, optional={
        "epsilon_rdp": nonneg, "epsilon_pld": nonneg, "delta": nonneg, "noise_multiplier": nonneg,
        "rounds": st.one_of(st.none(), st.integers(0, 10**9)), "mechanism": utf8_text})))
    signatures = list(m.SIGNATURES) + draw(st.lists(utf8_text, max_size=2))
    return dict(
        model_version=draw(st.from_regex(m._VERSION_PATTERN, fullmatch=True)),
        round=draw(st.one_of(st.none(), st.integers(0, 10**9), st.integers(0, 10**30))),
        dataset=draw(utf8_text),
        num_items=len(item_ids),
        dim=draw(st.integers(1, 1024)),
        item_ids=tuple(item_ids),
        item_titles=draw(st.one_of(st.none(), st.lists(utf8_text, min_size=len(item_ids), max_size=len(item_ids))
                                   .map(tuple))),
        rating_min=low,
        rating_max=high,
        hyperparameters=hyper,
        model_sha256=draw(st.binary(min_size=32, max_size=32)).hex(),
        model_bytes=draw(st.integers(1, m.MAX_MODEL_BYTES)),
        privacy=privacy,
        signatures=tuple(draw(st.permutations(signatures))),
        created_at=draw(utf8_text),
    )


def manifests(**kwargs):
    return manifest_fields(**kwargs).map(lambda fields: _manifest_module().Manifest(**fields))
