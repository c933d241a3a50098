"""``fatune bench serve``: time to first token and tokens/s of ``fatune serve`` under concurrent clients.

The real server runs in this process: the registry and the app are built as ``fatune serve`` builds them
(``serve.registry.build_registry``, ``serve.app.create_app``; no votes file) and uvicorn answers on a free
127.0.0.1 port in a background thread. After one warm-up request, for each client count C (``--clients``),
C threads start together; each sends ``--requests-per-client`` streaming chat completions one after
another (``temperature: 0``, ``max_tokens`` fixed, ``stream_options.include_usage``), cycling through a
fixed set of Persian prompts of different lengths (client i's request j gets prompt i + j), so batches
mix prompt lengths. Per request: the time to first token (the first non-empty content delta; the server
holds back incomplete characters and trailing spaces, so this is what a client sees) and the completion
tokens of the usage chunk.

Per C: median and p90 time to first token, aggregate tokens/s (all completion tokens over the phase's
wall time), per-client tokens/s (a client's tokens over its own time, averaged), the aggregate's ratio to
C = 1, and the mean batch size the server's batcher formed. The server has no way to ignore the end of
turn, so an answer may end before ``max_tokens``: the report counts the tokens actually generated and how
many requests stopped early.

    fatune bench serve                                           # Gemma 3 270M, 1 and 8 clients
    fatune bench serve runs/demo/lora --clients 1,4,8 --requests-per-client 2 --out serve.json
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from typing import Sequence

from fatune.bench.common import command_line, environment, format_table, positive, write_report
from fatune.errors import FatuneError

DEFAULT_MODEL = "pypi:gemma-3-270m"
SYSTEM = "شما یک دستیار مفید هستید. پاسخ‌ها را کامل و به فارسی بنویسید."
PASSAGE = ("شعر فارسی بیش از هزار سال پیشینه دارد. رودکی را پدر شعر فارسی می‌دانند و فردوسی با سرودن شاهنامه "
           "زبان فارسی را زنده نگه داشت. سعدی در گلستان و بوستان نثر و نظم را به هم آمیخت و حافظ غزل را به اوج "
           "رساند. مولوی در مثنوی داستان‌های بسیاری را برای بیان اندیشه‌های عرفانی به کار برد. امروز نیز شعر "
           "این شاعران در خانه‌های ایرانیان خوانده می‌شود و بسیاری از بیت‌های آنان ضرب‌المثل شده است.")
PROMPTS: tuple[tuple[str, list[dict]], ...] = (
    ("story", [{"role": "user", "content": "یک داستان کوتاه درباره‌ی گربه‌ای بنویس که در تهران گم شده است."}]),
    ("isfahan", [{"role": "user", "content": "درباره‌ی تاریخ شهر اصفهان و بناهای مهم آن توضیح بده."}]),
    ("tips", [{"role": "system", "content": SYSTEM},
              {"role": "user", "content": "ده نکته برای یادگیری یک زبان تازه بنویس و هر کدام را توضیح بده."}]),
    ("summary", [{"role": "system", "content": SYSTEM},
                 {"role": "user", "content": f"{PASSAGE}\n\nاین متن را خلاصه کن و سپس درباره‌ی آن نظر بده."}]),
)


def parse_clients(spec: str | Sequence[int]) -> list[int]:
    """``"1,8"`` -> ``[1, 8]``: positive client counts, in the order given, without repeats."""
    try:
        counts = [int(c) for c in spec.split(",") if c.strip()] if isinstance(spec, str) else [int(c) for c in spec]
    except ValueError:
        raise FatuneError(f"--clients {spec}: give comma-separated client counts, e.g. 1,8") from None
    if not counts or min(counts) < 1:
        raise FatuneError(f"--clients {spec}: client counts must be positive numbers, e.g. 1,8")
    return list(dict.fromkeys(counts))


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation (numpy's default); None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _http():
    try:
        import httpx
    except ImportError:  # openai 3.x depends on httpx2, httpx's successor with the same API
        try:
            import httpx2 as httpx
        except ImportError:
            raise FatuneError("fatune bench serve needs an HTTP client: pip install httpx") from None
    return httpx


class _Server:
    """uvicorn answering ``app`` on a free 127.0.0.1 port, in a background thread."""

    def __init__(self, app):
        import socket

        import uvicorn

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="fatune-bench-serve", daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise FatuneError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def stream_request(http, url: str, model_id: str, messages: list[dict], max_tokens: int) -> dict:
    """One streaming chat completion: seconds to the first non-empty content, total seconds, usage."""
    body = {"model": model_id, "messages": messages, "temperature": 0, "max_tokens": max_tokens, "stream": True,
            "stream_options": {"include_usage": True}}
    began = time.perf_counter()
    first, usage, finish = None, None, None
    with http.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            response.read()
            raise FatuneError(f"the server answered HTTP {response.status_code}: {response.text}")
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                raise FatuneError(f"the server failed a request: {event['error'].get('message')}")
            for choice in event.get("choices") or []:
                if first is None and (choice.get("delta") or {}).get("content"):
                    first = time.perf_counter() - began
                finish = choice.get("finish_reason") or finish
            usage = event.get("usage") or usage
    if usage is None:
        raise FatuneError("the server's stream ended without its usage chunk")
    return {"ttft_s": None if first is None else round(first, 4), "seconds": round(time.perf_counter() - began, 4),
            "prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"],
            "finish_reason": finish}


def _phase(url: str, model_id: str, prompts, clients: int, per_client: int, max_tokens: int, batcher) -> dict:
    """``clients`` threads, each sending ``per_client`` requests one after another, all starting together."""
    httpx = _http()
    before = dict(batcher.stats)
    start = threading.Barrier(clients + 1)
    done: list[list[dict]] = [[] for _ in range(clients)]
    spans: list[float] = [0.0] * clients
    errors: list[BaseException] = []

    def client(i: int) -> None:
        start.wait()
        began = time.perf_counter()
        try:
            with httpx.Client(timeout=900) as http:
                for j in range(per_client):
                    name, messages = prompts[(i + j) % len(prompts)]
                    done[i].append({"client": i, "prompt": name,
                                    **stream_request(http, url, model_id, messages, max_tokens)})
        except BaseException as error:  # reported by the main thread
            errors.append(error)
        spans[i] = time.perf_counter() - began

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    if errors:
        raise errors[0]
    requests = [r for rows in done for r in rows]
    deadline = time.monotonic() + 10  # the worker counts a batch just after its rows' last events
    while batcher.stats["rows"] - before["rows"] < len(requests) and time.monotonic() < deadline:
        time.sleep(0.01)
    batches, rows = batcher.stats["batches"] - before["batches"], batcher.stats["rows"] - before["rows"]
    tokens = sum(r["completion_tokens"] for r in requests)
    ttfts = [r["ttft_s"] for r in requests if r["ttft_s"] is not None]
    client_rates = [sum(r["completion_tokens"] for r in mine) / span for mine, span in zip(done, spans) if span > 0]
    return {"clients": clients, "requests": len(requests), "completion_tokens": tokens,
            "requested_tokens": len(requests) * max_tokens,
            "stopped_early": sum(r["completion_tokens"] < max_tokens for r in requests),
            "wall_seconds": round(wall, 3), "tokens_per_s": round(tokens / wall, 2),
            "per_client_tokens_per_s": round(statistics.mean(client_rates), 2) if client_rates else None,
            "ttft_median_s": round(statistics.median(ttfts), 4) if ttfts else None,
            "ttft_p90_s": round(percentile(ttfts, 90), 4) if ttfts else None,
            "batches": batches, "mean_batch_size": round(rows / batches, 2) if batches else None,
            "per_request": requests}


def bench_serve(target: str = DEFAULT_MODEL, clients: str | Sequence[int] = "1,8", requests_per_client: int = 4,
                max_tokens: int = 64, prompts: Sequence[str] | None = None, max_batch: int = 8,
                out: str | None = None, command: str | None = None) -> dict:
    """Serve ``target`` in process, time every client count (see the module docstring), print the table and
    write the JSON report to ``out``. ``prompts``: user messages to use instead of the built-in set."""
    counts = parse_clients(clients)
    positive(requests_per_client, "--requests-per-client")
    positive(max_tokens, "--max-tokens")
    positive(max_batch, "--max-batch")
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise FatuneError("fatune bench serve needs the serve extra: pip install 'fatune[serve]'") from None
    _http()
    chosen = PROMPTS if not prompts else tuple((f"prompt {i + 1}", [{"role": "user", "content": p}])
                                                 for i, p in enumerate(prompts))
    from transformers.utils import logging as transformers_logging

    from fatune.serve.app import create_app
    from fatune.serve.registry import build_registry, parse_targets
    from fatune.serve.schema import Limits

    parse_targets([target])  # a bad id fails before anything loads
    transformers_logging.disable_progress_bar()
    print(f"fatune bench serve: loading {target} ...", flush=True)
    began = time.perf_counter()
    registry = build_registry([target])
    load_s = time.perf_counter() - began
    model_id = registry.ids()[0]
    app = create_app(registry, votes_path=None, limits=Limits(max_tokens=max(Limits.max_tokens, max_tokens)),
                     max_batch=max_batch, queue_limit=max(32, max(counts)))
    batcher = app.state.batcher
    results = []
    with _Server(app) as server, _http().Client(timeout=900) as http:
        listed = [m["id"] for m in http.get(f"{server.url}/v1/models").json()["data"]]
        if model_id not in listed:
            raise FatuneError(f"the server lists {listed}, not {model_id!r}")
        warmup = stream_request(http, server.url, model_id, chosen[0][1], max_tokens)
        for count in counts:
            print(f"fatune bench serve: {count} client(s) x {requests_per_client} request(s) ...", flush=True)
            results.append(_phase(server.url, model_id, chosen, count, requests_per_client, max_tokens, batcher))
    single = next((r["tokens_per_s"] for r in results if r["clients"] == 1), None)
    for result in results:
        result["speedup_vs_1"] = round(result["tokens_per_s"] / single, 2) if single else None
    report = {"bench": "serve", "command": command or command_line(), **environment(), "model": target,
              "model_id": model_id, "method": registry[model_id].method, "max_tokens": max_tokens,
              "requests_per_client": requests_per_client, "max_batch": max_batch, "temperature": 0,
              "prompts": [{"name": name, "messages": messages,
                           "prompt_tokens": len(registry[model_id].prompt_ids(messages))} for name, messages in chosen],
              "load_seconds": round(load_s, 1), "warmup_seconds": warmup["seconds"], "results": results}
    print(format_report(report))
    write_report(report, out)
    return report


def format_report(report: dict) -> str:
    rows = [[r["clients"], r["requests"], r["completion_tokens"], r["wall_seconds"], r["tokens_per_s"],
             r["per_client_tokens_per_s"], None if r["speedup_vs_1"] is None else f"{r['speedup_vs_1']:.2f}x",
             r["ttft_median_s"], r["ttft_p90_s"], r["mean_batch_size"]] for r in report["results"]]
    lines = ["", f"fatune bench serve: {report['model']} ({report['method']}), streaming, temperature 0, "
             f"max_tokens {report['max_tokens']}, {report['requests_per_client']} request(s) per client, "
             f"max batch {report['max_batch']}; prompts: "
             + ", ".join(f"{p['name']} ({p['prompt_tokens']} tokens)" for p in report["prompts"]), "",
             format_table(["clients", "requests", "tokens", "wall s", "tokens/s", "per client tok/s", "vs 1 client",
                           "TTFT median s", "TTFT p90 s", "mean batch"], rows)]
    early = sum(r["stopped_early"] for r in report["results"])
    if early:
        lines += ["", f"{early} of {sum(r['requests'] for r in report['results'])} requests ended at the end of turn "
                  "before max_tokens; tokens/s counts the tokens actually generated"]
    lines += ["", f"machine: {report['machine']}; torch {report['torch']} ({report.get('torch_threads')} threads), "
              f"transformers {report['transformers']}, peft {report['peft']}"]
    return "\n".join(lines)
