"""serve.schema: which chat-completion requests are honoured, accepted, refused, and the limits."""

import logging

import pytest

from fatune.serve.schema import Limits, RequestError, parse_chat_request

USER = [{"role": "user", "content": "سلام"}]


def request(**fields):
    return {"model": "m", "messages": USER, **fields}


def test_a_minimal_request_gets_openai_defaults():
    chat, max_tokens = parse_chat_request(request())
    assert max_tokens == 256 and chat.sampling == (True, 1.0, 1.0)  # OpenAI's temperature default is 1
    assert chat.stops == [] and not chat.stream
    assert chat.conversation() == USER


def test_honoured_fields():
    chat, max_tokens = parse_chat_request(request(temperature=0, top_p=0.5, max_tokens=12, stop="END", seed=3,
                                                  n=1, stream=True, stream_options={"include_usage": True}))
    assert chat.sampling == (False, None, None)  # temperature 0 is greedy
    assert max_tokens == 12 and chat.stops == ["END"] and chat.seed == 3
    assert chat.stream and chat.stream_options.include_usage
    chat, max_tokens = parse_chat_request(request(temperature=0.7, top_p=0.9, max_completion_tokens=20,
                                                  stop=["a", "b"]))
    assert chat.sampling == (True, 0.7, 0.9) and max_tokens == 20 and chat.stops == ["a", "b"]


def test_content_parts_are_joined_and_developer_is_system():
    messages = [{"role": "developer", "content": "کوتاه"},
                {"role": "user", "content": [{"type": "text", "text": "سلام "}, {"type": "text", "text": "دنیا"}]}]
    chat, _ = parse_chat_request(request(messages=messages))
    assert chat.conversation() == [{"role": "system", "content": "کوتاه"}, {"role": "user", "content": "سلام دنیا"}]


def test_harmless_fields_are_accepted_and_unknown_ones_logged(caplog):
    caplog.set_level(logging.DEBUG, logger="fatune.serve.schema")
    parse_chat_request(request(user="u1", presence_penalty=0, frequency_penalty=0.0, logit_bias={}, metadata={"a": "b"},
                               store=False, parallel_tool_calls=True, response_format={"type": "text"},
                               tool_choice="none", logprobs=False, brand_new_field=1))
    assert "brand_new_field" in caplog.text


@pytest.mark.parametrize("fields, status, needle", [
    ({"n": 2}, 400, "n:"),
    ({"logprobs": True}, 400, "logprobs"),
    ({"top_logprobs": 3}, 400, "top_logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
    ({"functions": [{"name": "f"}]}, 400, "functions"),
    ({"tool_choice": "auto"}, 400, "tool_choice"),
    ({"presence_penalty": 0.5}, 400, "presence_penalty"),
    ({"frequency_penalty": -1}, 400, "frequency_penalty"),
    ({"logit_bias": {"5": 10}}, 400, "logit_bias"),
    ({"response_format": {"type": "json_object"}}, 400, "response_format"),
    ({"store": True}, 400, "store"),
    ({"temperature": 3}, 400, "temperature"),
    ({"temperature": -0.1}, 400, "temperature"),
    ({"top_p": 0}, 400, "top_p"),
    ({"top_p": 1.5}, 400, "top_p"),
    ({"max_tokens": 0}, 400, "max_tokens"),
    ({"max_tokens": 5000}, 400, "--max-tokens-limit"),
    ({"max_completion_tokens": 1025}, 400, "--max-tokens-limit"),
    ({"max_tokens": 10, "max_completion_tokens": 20}, 400, "max_completion_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"stop": 5}, 400, "stop"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, 400, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400,
     "messages[0].content"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, 400,
     "must end with a user turn"),
    ({"messages": [{"role": "user", "content": "   "}]}, 400, "empty"),
    ({"messages": [{"role": "user", "content": "x"}] * 65}, 400, "--max-messages"),
    ({"messages": [{"role": "user", "content": "x" * 16001}]}, 400, "--max-message-chars"),
    ({"model": None}, 400, "model"),
])
def test_refused_requests_name_the_field_or_the_limit(fields, status, needle):
    with pytest.raises(RequestError) as caught:
        parse_chat_request(request(**fields))
    assert caught.value.status == status
    assert needle in caught.value.message
    body = caught.value.body()["error"]
    assert body["message"] == caught.value.message and body["type"] == "invalid_request_error"


def test_limits_are_changeable_and_never_clamp():
    limits = Limits(max_tokens=2048, max_messages=2, default_max_tokens=100)
    assert parse_chat_request(request(max_tokens=2000), limits)[1] == 2000
    assert parse_chat_request(request(), limits)[1] == 100
    with pytest.raises(RequestError, match="over this server's limit of 2; start `fatune serve` with --max-messages"):
        parse_chat_request(request(messages=USER + [{"role": "assistant", "content": "a"}] + USER), limits)


def test_a_body_that_is_not_an_object():
    with pytest.raises(RequestError, match="JSON object"):
        parse_chat_request([1, 2])
