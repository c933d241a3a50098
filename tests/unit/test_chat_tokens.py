"""lora/qlora ``method.chat_tokens``: the chat template's turn tokens train (PEFT trainable tokens), because
a base model never saw them; at load time their rows are merged so generation does not rebuild the matrix."""

import torch

from fatune.methods.lora import chat_token_ids, lora_config
from fatune.testing import tiny_gemma3, tiny_tokenizer


def test_the_turn_tokens_the_tokenizer_has_are_trained_by_default():
    tok = tiny_tokenizer()
    ids = chat_token_ids(tok)
    assert ids == sorted({tok.convert_tokens_to_ids("<start_of_turn>"), tok.convert_tokens_to_ids("<end_of_turn>")})
    assert tok.unk_token_id not in ids

    from fatune.config import load_config

    assert lora_config(load_config(None, []).method, tok).trainable_token_indices == ids
    assert lora_config(load_config(None, ["method.chat_tokens=false"]).method, tok).trainable_token_indices is None


def test_merging_the_trained_rows_for_inference_keeps_the_logits():
    from peft import LoraConfig, get_peft_model

    from fatune.generation.loading import _merge_trainable_tokens

    torch.manual_seed(0)
    model = get_peft_model(tiny_gemma3(300), LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM",
                                                        trainable_token_indices=[5, 6]))
    delta = model.get_base_model().get_input_embeddings().token_adapter.trainable_tokens_delta["default"]
    ids = torch.tensor([[1, 5, 7, 9, 6, 11, 5, 6]])
    with torch.no_grad():
        delta.add_(torch.randn_like(delta))
        unmerged = model(input_ids=ids).logits
        _merge_trainable_tokens(model)
        merged = model(input_ids=ids).logits
    torch.testing.assert_close(merged, unmerged)
    layers = [m for m in model.modules() if type(m).__name__ == "TrainableTokensLayer"]
    assert len(layers) == 2 and all(layer.merged for layer in layers)  # the embedding and the tied head
