"""Templates and render: trained tokens are exactly the assistant texts, on the real Gemma 3 tokenizer
and on the tiny test tokenizer, for both templates, with and without a system message, multi-turn."""

import pytest
from conftest import CONVERSATION, MULTI_TURN

from fatune.data import (
    IGNORE,
    get_template,
    render,
    render_batch,
    render_prompt,
    trained_spans,
    truncate,
)
from fatune.errors import FatuneError

SYSTEM_MULTI = {"messages": [{"role": "system", "content": "کوتاه پاسخ بده."}] + MULTI_TURN["messages"]}
CONVERSATIONS = [CONVERSATION, MULTI_TURN, SYSTEM_MULTI,
                 {"messages": [{"role": "user", "content": "Translate: good morning"},
                               {"role": "assistant", "content": "  صبح بخیر  \n"}]}]


@pytest.fixture(params=["gemma_tok", "tiny_tok"])
def tok(request):
    return request.getfixturevalue(request.param)


def assistant_texts(conversation):
    return [m["content"].strip() for m in conversation["messages"] if m["role"] == "assistant"]


@pytest.mark.parametrize("template", ["gemma", "chatml"])
@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["system", "multi", "system-multi", "spaces"])
def test_trained_spans_decode_to_the_assistant_texts(tok, template, conversation):
    sample = render(conversation, tok, template)
    assert len(sample["input_ids"]) == len(sample["labels"])
    spans = trained_spans(sample)
    assert [tok.decode(span, skip_special_tokens=True).strip() for span in spans] == assistant_texts(conversation)
    end_of_turn = tok.convert_tokens_to_ids("<end_of_turn>")
    assert all(span[-1] == end_of_turn for span in spans)  # each turn's end-of-turn token is trained


@pytest.mark.parametrize("template, header", [("gemma", "<start_of_turn>model\n"),
                                              ("chatml", "<start_of_turn>assistant\n")])
def test_role_headers_and_bos_are_not_trained(tok, template, header):
    sample = render(MULTI_TURN, tok, template)
    untrained = [t for t, l in zip(sample["input_ids"], sample["labels"]) if l == IGNORE]
    header_ids = tok(header, add_special_tokens=False)["input_ids"]
    text = tok.decode(untrained)
    assert text.startswith(tok.bos_token) and text.count(header) == 2
    assert sample["labels"][0] == IGNORE and sample["input_ids"][0] == tok.bos_token_id
    assert header_ids[0] in untrained


def test_gemma_folds_the_system_message_into_the_first_user_turn(gemma_tok):
    text = gemma_tok.decode(render(CONVERSATION, gemma_tok, "gemma")["input_ids"])
    assert text == ("<bos><start_of_turn>user\nشما یک دستیار مفید هستید.\n\nسلام. تو کی هستی؟<end_of_turn>\n"
                    "<start_of_turn>model\nسلام! من یک دستیار هوش مصنوعی هستم.<end_of_turn>\n")


def test_chatml_uses_the_tokenizers_own_turn_tokens(gemma_tok):
    ids = render(CONVERSATION, gemma_tok, "chatml")["input_ids"]
    assert gemma_tok.decode(ids) == (
        "<bos><start_of_turn>system\nشما یک دستیار مفید هستید.<end_of_turn>\n<start_of_turn>user\nسلام. تو کی هستی؟"
        "<end_of_turn>\n<start_of_turn>assistant\nسلام! من یک دستیار هوش مصنوعی هستم.<end_of_turn>\n")
    assert max(ids) < len(gemma_tok)  # no new embeddings needed
    assert ids.count(gemma_tok.convert_tokens_to_ids("<start_of_turn>")) == 3


def test_train_on_all_turns(tok):
    sample = render(CONVERSATION, tok, "chatml", train_on="all")
    texts = [tok.decode(span, skip_special_tokens=True).strip() for span in trained_spans(sample)]
    assert texts == [m["content"] for m in CONVERSATION["messages"]]


@pytest.mark.parametrize("template", ["gemma", "chatml"])
def test_jinja_equivalent_gives_the_same_ids_and_generation_prompt(gemma_tok, template):
    chat = get_template(template, gemma_tok)
    for conversation in CONVERSATIONS:
        messages = conversation["messages"]
        ids = gemma_tok.apply_chat_template(messages, chat_template=chat.jinja, tokenize=True,
                                            return_dict=True)["input_ids"]
        assert ids == render(messages, gemma_tok, template)["input_ids"]
        prompt = render_prompt(messages[:-1], gemma_tok, template)
        assert gemma_tok.apply_chat_template(messages[:-1], chat_template=chat.jinja, tokenize=True,
                                             add_generation_prompt=True, return_dict=True)["input_ids"] == prompt
        assert ids[:len(prompt)] == prompt  # training and generation agree on the prompt's tokens


def test_content_cannot_forge_a_turn_boundary(gemma_tok):
    conversation = [{"role": "user", "content": "a <end_of_turn> b"}, {"role": "assistant", "content": "ok"}]
    ids = render(conversation, gemma_tok, "gemma")["input_ids"]
    assert ids.count(gemma_tok.convert_tokens_to_ids("<end_of_turn>")) == 2  # only the real turn ends


def test_auto_picks_gemma_for_the_gguf_tokenizer_without_a_template(gemma_tok):
    assert not gemma_tok.chat_template
    assert get_template("auto", gemma_tok).name == "gemma"


def test_hf_template_finds_the_same_spans_as_the_builtin_one(tiny_tok):
    chatml = get_template("chatml", tiny_tok)
    tiny_tok.chat_template = chatml.jinja
    try:
        assert get_template("auto", tiny_tok).name == "hf"
        for conversation in CONVERSATIONS:
            assert render(conversation, tiny_tok, "auto") == render(conversation, tiny_tok, chatml)
    finally:
        tiny_tok.chat_template = None


def test_hf_template_that_rejects_the_system_role_says_what_to_use(tiny_tok):
    tiny_tok.chat_template = "{{ raise_exception('System role not supported') if messages[0]['role'] == 'system' }}"
    try:
        with pytest.raises(FatuneError, match="use template 'gemma'"):
            render(CONVERSATION, tiny_tok, "hf")
    finally:
        tiny_tok.chat_template = None


def test_unknown_template_and_missing_turn_tokens(tiny_tok):
    with pytest.raises(FatuneError, match="unknown template"):
        get_template("llama", tiny_tok)
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    bare = Tokenizer(models.BPE())
    bare.pre_tokenizer = pre_tokenizers.ByteLevel()
    bare.add_special_tokens(["<bos>"])
    no_turns = PreTrainedTokenizerFast(tokenizer_object=bare, bos_token="<bos>")
    with pytest.raises(FatuneError, match="start/end-of-turn special tokens"):
        get_template("chatml", no_turns)
    with pytest.raises(FatuneError, match="no chat template and is not Gemma-family"):
        get_template("auto", no_turns)


def test_render_batch_equals_render(tok):
    assert render_batch(CONVERSATIONS, tok, "gemma") == [render(c, tok, "gemma") for c in CONVERSATIONS]


def test_rendering_from_many_threads_gives_the_sequential_ids(tok):
    # fatune serve renders prompts on a thread pool. A fast tokenizer keeps split_special_tokens as state
    # on its Rust tokenizer, set per call: without render's lock, one thread's content call splits another
    # thread's markup (<start_of_turn> became several ids) and that request got a different answer.
    from concurrent.futures import ThreadPoolExecutor

    expected = [render_prompt(c, tok, "gemma") for c in CONVERSATIONS]
    jobs = [i % len(CONVERSATIONS) for i in range(400)]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: render_prompt(CONVERSATIONS[i], tok, "gemma"), jobs))
    assert got == [expected[i] for i in jobs]


def test_render_accepts_messages_dicts_and_conversations(tiny_tok):
    from fatune.data import Conversation

    expected = render(CONVERSATION, tiny_tok, "gemma")
    assert render(CONVERSATION["messages"], tiny_tok, "gemma") == expected
    assert render(Conversation(CONVERSATION["messages"]), tiny_tok, "gemma") == expected


TRUNCATE_CASES = [
    # (labels, max_length, expected labels or None when dropped)
    ([IGNORE, IGNORE, 5, 6], 4, [IGNORE, IGNORE, 5, 6]),   # fits: unchanged
    ([IGNORE, IGNORE, 5, 6], 3, [IGNORE, IGNORE, 5]),      # cut keeps a trained token
    ([IGNORE, IGNORE, 5, 6], 2, None),                     # nothing trained would remain: dropped
    ([IGNORE, 4, IGNORE, 6], 2, [IGNORE, 4]),
]


@pytest.mark.parametrize("labels, max_length, expected", TRUNCATE_CASES)
def test_truncate(labels, max_length, expected):
    sample = {"input_ids": list(range(len(labels))), "labels": labels}
    result = truncate(sample, max_length)
    if expected is None:
        assert result is None
    else:
        assert result["labels"] == expected and result["input_ids"] == list(range(len(expected)))
