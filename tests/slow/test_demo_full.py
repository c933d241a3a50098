"""The full `fatune demo` with its defaults on the real Gemma 3 270M (excluded from the default run:
python -m pytest -m demo)."""

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.demo]


def test_full_demo(tmp_path):
    from fatune.demo import run_demo

    report = run_demo(tmp_path / "demo")
    md = report.with_suffix(".md").read_text()
    for method in ("ptuning", "lora", "qlora", "embed_head"):
        assert f"| {method} |" in md
    rows = md.split("\n")[4:9]
    base_bpb = float(rows[0].split("|")[11])
    assert all(float(row.split("|")[11]) < base_bpb for row in rows[2:4])  # lora and qlora lower bits/byte
