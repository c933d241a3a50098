"""fatune serve end to end: a real uvicorn server on 127.0.0.1 with tiny models, called with the openai client.

One server (module-scoped) serves the tiny base, two LoRA runs on it (seeds 42 and 1), a P-Tuning run (those
four share one base), a QLoRA run (a 4-bit base of its own) and an embed_head run. Greedy answers must equal
``fatune.load(target).generate([messages], "greedy", max_new_tokens=N)`` for every id, streamed or not,
one at a time or interleaved with the other models' batches (adapters and chat-token rows switching)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
openai = pytest.importorskip("openai", reason="the openai client is not installed")
import uvicorn  # noqa: E402

try:
    import httpx
except ImportError:  # openai 3.x depends on httpx2, httpx's successor with the same API
    import httpx2 as httpx

from conftest import run_cli, tiny_train_config  # noqa: E402

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPT = [{"role": "user", "content": "سلام. تو کی هستی؟"}]
N = 12


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """uvicorn running ``app`` in a background thread on a free port."""

    def __init__(self, app):
        self.app, self.port = app, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def lora_b(tiny_model_dir, tmp_path_factory):
    """A second LoRA run on the tiny base, with a learning rate at which its chat-token rows change its
    greedy answer (at the tiny runs' 5e-3 they do not), so that rows leaking between adapters would show."""
    from fatune import train

    out = tmp_path_factory.mktemp("lora_seed1") / "lora_seed1"
    return train(tiny_train_config(tiny_model_dir, out, "lora", "train.max_steps=2", "train.seed=1",
                                   "train.learning_rate=5e-2")).out


@pytest.fixture(scope="module")
def targets(tiny_model_dir, tiny_runs, lora_b):
    """{id: what fatune.load gets} in the order the server is given them."""
    return {str(tiny_model_dir): str(tiny_model_dir), "lora": str(tiny_runs["lora"]), "lora_b": str(lora_b),
            "ptuning": str(tiny_runs["ptuning"] / "final"), "qlora": str(tiny_runs["qlora"]),
            "embed_head": str(tiny_runs["embed_head"])}


@pytest.fixture(scope="module")
def registry(targets, tiny_model_dir, tiny_runs, lora_b):
    from fatune.serve.registry import build_registry

    # the base by its path (id: the string given), a run dir, NAME=RUN, RUN/final, ...
    return build_registry([str(tiny_model_dir), str(tiny_runs["lora"]), f"lora_b={lora_b}",
                           str(tiny_runs["ptuning"] / "final"), str(tiny_runs["qlora"]), str(tiny_runs["embed_head"])])


@pytest.fixture(scope="module")
def references(targets):
    """What ``fatune generate --preset greedy`` answers, each target loaded alone."""
    from fatune import load

    refs = {}
    for model_id, target in targets.items():
        result = load(target).generate([PROMPT], "greedy", max_new_tokens=N)[0]
        refs[model_id] = (result["messages"][-1]["content"], result["new_tokens"], result["stop_reason"])
    return refs


@pytest.fixture(scope="module")
def server(registry, tmp_path_factory):
    from fatune.serve.app import create_app

    votes = tmp_path_factory.mktemp("votes") / "votes.jsonl"
    app = create_app(registry, api_key=KEY, votes_path=votes)
    with Server(app) as running:
        running.batcher, running.votes = app.state.batcher, votes
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)


def ask(client, model_id, **kwargs):
    return client.chat.completions.create(model=model_id, messages=PROMPT, temperature=0, max_tokens=N, **kwargs)


def ask_streamed(client, model_id, **kwargs) -> tuple[str, list]:
    chunks = list(client.chat.completions.create(model=model_id, messages=PROMPT, temperature=0, max_tokens=N,
                                                 stream=True, **kwargs))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


def test_runs_on_one_base_share_its_weights(registry, targets, tiny_model_dir):
    assert registry.ids() == list(targets)
    shared = registry[str(tiny_model_dir)].owner
    assert all(registry[i].owner is shared for i in ("lora", "lora_b", "ptuning"))
    assert registry["qlora"].owner is not shared and registry["embed_head"].owner is not shared
    assert registry["lora"].adapter != registry["lora_b"].adapter and registry["ptuning"].virtual is not None


def test_models_lists_every_id(client, targets):
    assert [m.id for m in client.models.list().data] == list(targets)


def test_greedy_answers_equal_fatune_generate_for_every_model(client, references):
    assert len({text for text, _, _ in references.values()}) >= 4, "the tiny models should answer differently"
    for model_id, (text, tokens, stop_reason) in references.items():
        answer = ask(client, model_id)
        assert answer.choices[0].message.content == text, model_id
        assert answer.choices[0].finish_reason == ("length" if stop_reason == "length" else "stop")
        assert answer.usage.completion_tokens == tokens
        assert answer.usage.total_tokens == answer.usage.prompt_tokens + tokens
        streamed, chunks = ask_streamed(client, model_id, stream_options={"include_usage": True})
        assert streamed == text, model_id
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunks[-1].usage.completion_tokens == tokens and not chunks[-1].choices


def test_interleaved_requests_to_all_models_keep_each_models_answer(client, references):
    # Batches of different adapters, the base and P-Tuning alternate on the shared base: each must see only
    # its own adapter and chat-token rows.
    jobs = [model_id for _ in range(3) for model_id in references]
    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(lambda m: ask(client, m).choices[0].message.content, jobs))
    assert answers == [references[m][0] for m in jobs]


def _token_layers(model) -> list:
    return [m for m in model.modules() if type(m).__name__ == "TrainableTokensLayer"]


def test_chat_token_rows_follow_the_active_adapter(registry, client, references, targets, tiny_model_dir):
    import torch

    from fatune import load

    # lora_b's answer depends on its trained chat-token rows: with the base's rows it is another answer
    alone = load(targets["lora_b"])
    for layer in _token_layers(alone.model):
        layer.unmerge()
        layer.enable_adapters(False)
    assert alone.chat(PROMPT, max_new_tokens=N) != references["lora_b"][0]

    shared = registry["lora"].owner
    embedding = next(layer for layer in _token_layers(shared.peft) if layer.tied_adapter is None)
    rows = embedding.token_indices[registry["lora_b"].adapter]
    weight = embedding.base_layer.weight
    original = embedding.trainable_tokens_original[registry["lora_b"].adapter]
    for model_id in ("lora_b", str(tiny_model_dir), "lora_b", "lora", "ptuning", "lora_b", "lora"):
        assert ask(client, model_id).choices[0].message.content == references[model_id][0], model_id
        adapter = registry[model_id].adapter
        expected = original if adapter is None else embedding.trainable_tokens_delta[adapter]
        assert torch.equal(weight[rows], expected.to(weight.dtype)), model_id  # merged: only the active run's


def test_stop_strings_cut_the_answer(client, references):
    text = references["lora"][0]
    stop = text[len(text) // 2:len(text) // 2 + 2]
    expected = text[:text.find(stop)].rstrip()
    assert ask(client, "lora", stop=[stop]).choices[0].message.content == expected
    assert ask_streamed(client, "lora", stop=stop)[0] == expected


def test_a_seed_repeats_a_sampled_answer(client):
    answers = {client.chat.completions.create(model="lora", messages=PROMPT, temperature=1.0, max_tokens=N,
                                              seed=7).choices[0].message.content for _ in range(2)}
    assert len(answers) == 1


def test_concurrent_requests_are_batched(server, client, references):
    before = dict(server.batcher.stats)
    server.batcher.step_delay = 0.02  # long enough batches for the others to queue behind the first
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: ask(client, "lora").choices[0].message.content, range(8)))
    finally:
        server.batcher.step_delay = 0.0
    assert answers == [references["lora"][0]] * 8  # left padding in a batch changes nothing
    assert server.batcher.stats["batches"] - before["batches"] < 8
    assert server.batcher.stats["largest_batch"] >= 2


def test_bad_requests_get_openai_errors(server, tiny_model_dir):
    def post(body, raw=None):
        content = raw if raw is not None else json.dumps(body).encode()
        return httpx.post(f"{server.url}/v1/chat/completions", content=content,
                          headers={**AUTH, "Content-Type": "application/json"}, timeout=30)

    ok = {"model": "lora", "messages": PROMPT}
    cases = [
        ({**ok, "n": 2}, 400, "n:"),
        ({**ok, "logprobs": True}, 400, "logprobs"),
        ({**ok, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
        ({**ok, "model": "nope"}, 404, "lora_b"),  # the message lists the served ids
        ({**ok, "max_tokens": 5000}, 400, "--max-tokens-limit"),
        ({**ok, "messages": PROMPT * 65}, 400, "--max-messages"),
        ({**ok, "messages": [{"role": "user", "content": "x" * 70000}]}, 413, "--max-request-bytes"),
        ({**ok, "messages": [{"role": "robot", "content": "x"}]}, 400, "messages[0].role"),
        ({**ok, "messages": []}, 400, "messages"),
        ({**ok, "temperature": 3}, 400, "temperature"),
        ({"messages": PROMPT}, 400, "model"),
        (None, 400, "not valid JSON"),
    ]
    for body, status, needle in cases:
        response = post(body, raw=b"{nope" if body is None else None)
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert needle in error["message"], (needle, error)
        assert error["type"] and "Traceback" not in response.text
    missing = httpx.get(f"{server.url}/v1/nothing-here", headers=AUTH)
    assert missing.status_code == 404 and "error" in missing.json()


def test_api_key_is_enforced_on_the_api_but_not_on_the_pages(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        response = httpx.get(f"{server.url}/v1/models", headers=headers)
        assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
        assert httpx.get(f"{server.url}/arena/leaderboard", headers=headers).status_code == 401
    assert httpx.get(f"{server.url}/v1/models", headers=AUTH).status_code == 200
    for page in ("/", "/arena"):
        response = httpx.get(server.url + page)
        assert response.status_code == 200 and "text/html" in response.headers["content-type"]


def _stream(client: httpx.Client, url: str, model_id: str, max_tokens: int):
    return client.stream("POST", f"{url}/v1/chat/completions", headers=AUTH, timeout=60,
                         json={"model": model_id, "messages": PROMPT, "temperature": 0, "max_tokens": max_tokens,
                               "stream": True})


def _wait(condition, seconds: float = 20.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_disconnected_stream_stops_generating(server, tiny_model_dir):
    base = str(tiny_model_dir)
    server.batcher.step_delay = 0.05  # 1000 tokens would take 50 s
    try:
        with httpx.Client() as http, _stream(http, server.url, base, 1000) as response:
            lines = response.iter_lines()
            request_id = json.loads(next(lines).removeprefix("data: "))["id"]
            generation = server.batcher.find(request_id)
            _wait(lambda: generation.tokens >= 3)
            at_close = generation.tokens
        _wait(lambda: generation.finished, 10)
    finally:
        server.batcher.step_delay = 0.0
    assert generation.tokens - at_close <= 3, (at_close, generation.tokens)


def test_a_client_that_leaves_a_non_streaming_request_stops_it(server, tiny_model_dir):
    server.batcher.step_delay = 0.05
    try:
        with pytest.raises(httpx.TimeoutException):  # the client gives up after a second
            httpx.post(f"{server.url}/v1/chat/completions", headers=AUTH, timeout=1.0,
                       json={"model": str(tiny_model_dir), "messages": PROMPT, "temperature": 0, "max_tokens": 1000})
        generation = server.batcher.recent[-1]
        _wait(lambda: generation.finished, 10)
    finally:
        server.batcher.step_delay = 0.0
    assert generation.cancelled.is_set() and generation.tokens < 100  # 1000 tokens would take 50 s


def test_a_full_queue_answers_429_at_once(registry, tiny_model_dir):
    from fatune.serve.app import create_app

    base = str(tiny_model_dir)
    app = create_app(registry, api_key=KEY, max_batch=1, queue_limit=1)
    batcher = app.state.batcher
    batcher.step_delay = 0.05
    with Server(app) as small, httpx.Client() as http:
        with _stream(http, small.url, base, 1000) as running:
            first_lines = running.iter_lines()  # kept: a dropped line iterator may close the stream
            first = batcher.find(json.loads(next(first_lines).removeprefix("data: "))["id"])
            _wait(lambda: first.tokens > 0)  # generating: the queue is empty again
            with _stream(http, small.url, base, 1000) as waiting:
                second_lines = waiting.iter_lines()
                second = batcher.find(json.loads(next(second_lines).removeprefix("data: "))["id"])
                assert second.tokens == 0  # it waits behind the first (max_batch=1): the queue is full
                began = time.monotonic()
                refused = http.post(f"{small.url}/v1/chat/completions", headers=AUTH, timeout=30,
                                    json={"model": base, "messages": PROMPT, "max_tokens": 4})
                assert time.monotonic() - began < 5
                assert refused.status_code == 429
                assert refused.json()["error"]["type"] == "rate_limit_error"
        _wait(lambda: first.finished and second.finished)
    assert first.tokens < 1000 and second.tokens == 0


def test_32_streaming_clients_and_32_arena_votes(server, references):
    async def stream(client, model_id):
        chunks = await client.chat.completions.create(model=model_id, messages=PROMPT, temperature=0, max_tokens=N,
                                                      stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])

    async def clients():
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=120)
        jobs = [list(references)[i % len(references)] for i in range(32)]
        texts = await asyncio.gather(*(stream(client, m) for m in jobs))
        return jobs, texts

    began = time.monotonic()
    jobs, texts = asyncio.run(asyncio.wait_for(clients(), 120))
    assert time.monotonic() - began < 120
    assert texts == [references[m][0] for m in jobs]

    pytest.importorskip("fatune.eval.votes", reason="the votes module is not written yet")
    pytest.importorskip("fatune.eval.arena", reason="the arena module is not written yet")

    async def arena():
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=120) as http:
            battles = await asyncio.gather(*(http.post("/arena/battle", json={"prompt": "سلام", "system": "",
                                                                               "max_tokens": 6})
                                             for _ in range(32)))
            assert all(b.status_code == 200 for b in battles), battles[0].text
            ids = [b.json()["battle_id"] for b in battles]
            assert all(len(b.json()["answers"]) == 2 for b in battles)
            winners = ["left", "right", "tie", "both_bad"]
            votes = await asyncio.gather(*(http.post("/arena/vote", json={"battle_id": i, "winner": winners[k % 4]})
                                           for k, i in enumerate(ids)))
            assert all(v.status_code == 200 for v in votes), votes[0].text
            assert all(len(set(v.json()["models"])) == 2 for v in votes)
            again = await http.post("/arena/vote", json={"battle_id": ids[0], "winner": "left"})
            unknown = await http.post("/arena/vote", json={"battle_id": "nope", "winner": "left"})
            bad = await http.post("/arena/vote", json={"battle_id": ids[0], "winner": "both"})
            board = await http.get("/arena/leaderboard")
            return again, unknown, bad, board

    again, unknown, bad, board = asyncio.run(arena())
    assert (again.status_code, unknown.status_code, bad.status_code) == (409, 404, 400)
    lines = server.votes.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 32 and all(json.loads(line)["prompt"] == "سلام" for line in lines)
    assert board.status_code == 200 and board.json()["votes"] == 32


def test_cli_refuses_bad_targets_in_one_line(tmp_path):
    missing = run_cli("serve", str(tmp_path / "no-such-run"))
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"fatune: error: {tmp_path / 'no-such-run'}: no such run or model directory"
    twice = run_cli("serve", f"a={tmp_path}", f"a={tmp_path / 'x'}")
    assert twice.returncode == 2 and "two targets have the id 'a'" in twice.stderr
