"""``fatune bench head`` on a small head: four timed variants and the report shape (no timing asserted)."""

import json

from fatune.bench.head import bench_head


def test_bench_head_reports_every_variant(tmp_path):
    out = tmp_path / "head.json"
    report = bench_head(tokens=8, vocab=500, hidden=16, repeats=1, out=out, command="fatune bench head")
    assert json.loads(out.read_text())["results"] == report["results"]
    assert [(r["head"], r["variant"]) for r in report["results"]] == [
        ("frozen", "fused"), ("frozen", "full logits"), ("trained", "fused"), ("trained", "full logits")]
    assert all(r["ms_per_token"] > 0 for r in report["results"])
