"""``fatune bench serve`` on the tiny model: the report's structure and token counts (timing is never asserted)."""

import json

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")
try:
    import httpx  # noqa: F401
except ImportError:  # openai 3.x depends on httpx2, httpx's successor with the same API
    pytest.importorskip("httpx2", reason="no HTTP client (httpx or httpx2) is installed")

from fatune.cli import main


def test_bench_serve_reports_every_client_count(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "serve.json"
    argv = ["bench", "serve", str(tiny_model_dir), "--clients", "1,2", "--requests-per-client", "1",
            "--max-tokens", "4", "--out", str(out)]
    assert main(argv) == 0
    assert "TTFT median s" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["bench"] == "serve" and report["command"] == "fatune " + " ".join(argv)
    assert {"machine", "torch", "transformers", "peft", "python", "date", "fatune"} <= set(report)
    assert report["model"] == report["model_id"] == str(tiny_model_dir) and report["method"] == "base"
    assert report["max_tokens"] == 4 and report["requests_per_client"] == 1
    assert len(report["prompts"]) >= 3 and len({p["prompt_tokens"] for p in report["prompts"]}) >= 2
    assert [r["clients"] for r in report["results"]] == [1, 2]
    for result in report["results"]:
        requests = result["per_request"]
        assert result["requests"] == len(requests) == result["clients"]
        assert sorted(r["client"] for r in requests) == list(range(result["clients"]))
        assert [r["completion_tokens"] for r in requests] == [4] * result["clients"]
        assert result["completion_tokens"] == result["requested_tokens"] == 4 * result["clients"]
        assert result["stopped_early"] == 0
        assert all(r["finish_reason"] == "length" and r["prompt_tokens"] > 0 for r in requests)
        for key in ("wall_seconds", "tokens_per_s", "per_client_tokens_per_s", "speedup_vs_1", "mean_batch_size"):
            assert isinstance(result[key], (int, float)), key
        assert result["batches"] >= 1 and 1 <= result["mean_batch_size"] <= result["clients"]
    assert report["results"][0]["speedup_vs_1"] == 1.0
