"""Property-based: random and mutated profiles never crash the loader.

Whatever the bytes, :func:`load_profile` either returns a valid profile or raises
:class:`ProfileError` whose every problem names the file and a line.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import ProfileError
from harness.profile import load_profile

TEMPLATE = Path(__file__).resolve().parents[1] / "device_profiles" / "template-plc.yaml"
BASE: dict[str, Any] = yaml.safe_load(TEMPLATE.read_text())
LOCATED = re.compile(r"^.+:\d+: \S")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.dates().map(str),
    st.sampled_from(["env:X", "file:/nonexistent", "::", "0"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


def paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(data, dict):
        for k, v in data.items():
            out += paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += paths(v, (*prefix, i))
    return out


ALL_PATHS = [p for p in paths(BASE) if p]


def mutate(data: Any, path: tuple[Any, ...], value: Any, delete: bool) -> Any:
    import copy

    data = copy.deepcopy(data)
    node = data
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


def check(tmp_path: Path, text: str | bytes) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    try:
        load_profile(path)
    except ProfileError as exc:
        assert exc.problems  # noqa: PT017 - either outcome is allowed; only its form is checked
        for problem in exc.problems:
            assert problem.startswith(str(path)), problem
            assert LOCATED.match(problem), problem


SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(path=st.sampled_from(ALL_PATHS), value=values, delete=st.booleans())
def test_mutated_template(tmp_path: Path, path: tuple[Any, ...], value: Any, delete: bool) -> None:
    check(tmp_path, yaml.safe_dump(mutate(BASE, path, value, delete)))


@SETTINGS
@given(doc=values)
def test_random_documents(tmp_path: Path, doc: Any) -> None:
    check(tmp_path, yaml.safe_dump(doc))


@SETTINGS
@given(raw=st.binary(max_size=200))
def test_random_bytes(tmp_path: Path, raw: bytes) -> None:
    check(tmp_path, raw)


@SETTINGS
@given(cut=st.integers(0, 4000), junk=st.text(max_size=8))
def test_truncated_and_spliced_text(tmp_path: Path, cut: int, junk: str) -> None:
    text = TEMPLATE.read_text()
    check(tmp_path, text[:cut] + junk + text[cut + len(junk) :])


def test_cli_on_a_mutated_profile_exits_2_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(mutate(BASE, ("safety", "max_request_rate"), [1, 2], False)))
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "validate", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert re.search(rf"{re.escape(str(bad))}:\d+: safety.max_request_rate: ", proc.stderr)
