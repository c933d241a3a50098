"""Per-model request queues and batched, streaming, cancellable generation.

One worker thread per owner of weights (a shared base or a standalone model: ``registry``) takes the
oldest waiting request, then every other waiting request *of the same model* with the same sampling
settings, up to ``max_batch``, and generates them as one left-padded batch (``ChatModel._batch``).
Requests with a ``seed`` run alone, so that the seed decides their tokens; requests with different
``max_tokens`` share a batch, each row stopping at its own limit.

While ``generate`` runs, ``_Rows`` (its stopping criteria) routes each step's new token per row to that
row's ``RowText`` and the newly final text to the request's asyncio queue, and answers a per-row bool:
the row hit its own max_tokens, a stop string, the end of turn, or its client went away (``cancel``).
A disconnected client's row is therefore done at the next step, and the batch ends when all rows are.

A model's queue holds at most ``queue_limit`` waiting requests; ``submit`` beyond that raises
``QueueFull`` at once (the app answers 429), never blocks.

Sampling reads torch's global random generator, which every thread shares: batches that sample hold one
process-wide lock, so a seeded request's tokens depend only on its seed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
import uuid
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Sequence

from fatune.serve.text import RowText

log = logging.getLogger(__name__)
_RNG_LOCK = threading.Lock()


class QueueFull(Exception):
    pass


@dataclass(frozen=True)
class Sampling:
    do_sample: bool = False
    temperature: float | None = None
    top_p: float | None = None


@dataclass
class Piece:
    text: str


@dataclass
class Done:
    text: str  # the whole answer
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Failed:
    error: BaseException


class GenRequest:
    """One chat completion in flight. Its events (``Piece``... then ``Done`` or ``Failed``) arrive on an
    asyncio queue of the loop that submitted it; ``cancel`` (from any thread) stops it at the next step."""

    _numbers = itertools.count()

    def __init__(self, model_id: str, prompt_ids: list[int], max_tokens: int, sampling: Sampling,
                 seed: int | None = None, stop: Sequence[str] = ()):
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.number = next(self._numbers)  # arrival order
        self.model_id, self.prompt_ids, self.max_tokens = model_id, list(prompt_ids), max_tokens
        self.sampling, self.seed, self.stop = sampling, seed, list(stop)
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.tokens = 0  # generated so far (the end-of-turn token counts, as in ``fatune generate``)
        self.finished = False

    def cancel(self) -> None:
        self.cancelled.set()

    def emit(self, event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancel()

    async def result(self) -> Done:
        """Wait for the whole answer (non-streaming)."""
        while True:
            event = await self.events.get()
            if isinstance(event, Failed):
                raise event.error
            if isinstance(event, Done):
                return event


class _Row:
    def __init__(self, request: GenRequest, tokenizer, stop_ids):
        self.request, self.stop_ids = request, set(stop_ids)
        self.text = RowText(tokenizer, request.stop)
        self.done, self.reason = False, None

    def add(self, token: int) -> None:
        request = self.request
        if request.cancelled.is_set():
            self.done, self.reason = True, "cancelled"
            return
        request.tokens += 1
        if token in self.stop_ids:
            self.done, self.reason = True, "stop"
            return
        piece = self.text.add(token)
        if piece:
            request.emit(Piece(piece))
        if self.text.hit_stop:
            self.done, self.reason = True, "stop"
        elif request.tokens >= request.max_tokens:
            self.done, self.reason = True, "length"

    def finish(self) -> None:
        piece = self.text.finish()
        if piece:
            self.request.emit(Piece(piece))
        reason = self.reason or ("length" if self.request.tokens >= self.request.max_tokens else "stop")
        self.request.finished = True
        self.request.emit(Done(self.text.text, reason, len(self.request.prompt_ids), self.request.tokens))


class _Rows:
    """``generate``'s stopping criteria, which also routes each step's new tokens to their rows.

    The criteria see every step's tokens (``input_ids[:, -1]``) before ``generate`` decides whether to go
    on, so a row that reaches its limit, a stop string or the end of turn is done at that very step. A
    streamer would not do: transformers 5 hands it the tokens after the stopping criteria ran, one step
    late for every per-row decision."""

    def __init__(self, rows: list[_Row], step_delay: float = 0.0):
        self.rows, self.step_delay = rows, step_delay

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        if self.step_delay:
            time.sleep(self.step_delay)  # tests slow generation down to watch it stop
        for row, token in zip(self.rows, input_ids[:, -1].tolist()):
            if not row.done:
                row.add(token)
        return torch.tensor([row.done for row in self.rows], device=input_ids.device)


class _Worker:
    """The queues of the models of one owner, and the thread that generates their batches."""

    def __init__(self, batcher: Batcher, owner):
        self.batcher, self.owner = batcher, owner
        self.pending: dict[str, deque[GenRequest]] = {}
        self.wake = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._run, name=f"fatune-batcher-{owner.name}", daemon=True)
        self.thread.start()

    def submit(self, request: GenRequest) -> None:
        with self.wake:
            queue = self.pending.setdefault(request.model_id, deque())
            if len(queue) >= self.batcher.queue_limit:
                raise QueueFull(request.model_id)
            queue.append(request)
            self.wake.notify()

    def _take(self) -> list[GenRequest] | None:
        with self.wake:
            while not self.closed and not any(self.pending.values()):
                self.wake.wait()
            if self.closed:
                return None
            queue = min((q for q in self.pending.values() if q), key=lambda q: q[0].number)  # oldest first
            head = queue.popleft()
            batch = [head]
            if head.seed is None:
                for request in list(queue):
                    if len(batch) >= self.batcher.max_batch:
                        break
                    if request.seed is None and request.sampling == head.sampling:
                        queue.remove(request)
                        batch.append(request)
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            live = [r for r in batch if not r.cancelled.is_set()]
            for request in batch:
                if request.cancelled.is_set():  # its client left while it waited
                    request.finished = True
                    request.emit(Done("", "cancelled", len(request.prompt_ids), 0))
            if live:
                self.batcher.generate(live)

    def close(self) -> None:
        with self.wake:
            self.closed = True
            self.wake.notify_all()


class Batcher:
    """Queues and workers for every model of a registry. ``stats`` and ``recent`` are for tests and logs."""

    def __init__(self, registry, max_batch: int = 8, queue_limit: int = 32):
        if max_batch < 1 or queue_limit < 1:
            raise ValueError("max_batch and queue_limit must be at least 1")
        self.registry, self.max_batch, self.queue_limit = registry, max_batch, queue_limit
        self.step_delay = 0.0
        self._stats_lock = threading.Lock()
        self.stats = {"batches": 0, "rows": 0, "tokens": 0, "largest_batch": 0}
        self.recent: deque[GenRequest] = deque(maxlen=1024)
        self._workers = {id(owner): _Worker(self, owner) for owner in registry.owners()}

    def submit(self, model_id: str, prompt_ids: list[int], max_tokens: int, sampling: Sampling = Sampling(),
               seed: int | None = None, stop: Sequence[str] = ()) -> GenRequest:
        """Queue a request (from the event loop's thread); ``QueueFull`` when its model's queue is full."""
        request = GenRequest(model_id, prompt_ids, max_tokens, sampling, seed, stop)
        self._workers[id(self.registry[model_id].owner)].submit(request)
        self.recent.append(request)
        return request

    def find(self, request_id: str) -> GenRequest | None:
        return next((r for r in reversed(self.recent) if r.id == request_id), None)

    def generate(self, batch: list[GenRequest]) -> None:
        """Run one batch (all one model's) on the calling worker thread; every request gets its events."""
        import torch
        from transformers import StoppingCriteriaList

        from fatune.generation.presets import generation_settings

        model = self.registry[batch[0].model_id]
        sampling = batch[0].sampling
        rows = _Rows([_Row(r, model.tokenizer, model.stop_ids) for r in batch], self.step_delay)
        settings = generation_settings("sample" if sampling.do_sample else "greedy", temperature=sampling.temperature,
                                       top_p=sampling.top_p, max_new_tokens=max(r.max_tokens for r in batch))
        began = time.perf_counter()
        try:
            with _RNG_LOCK if sampling.do_sample else nullcontext():
                if batch[0].seed is not None:
                    torch.manual_seed(batch[0].seed)
                model.generate([r.prompt_ids for r in batch], stopping_criteria=StoppingCriteriaList([rows]),
                               **settings)
        except Exception as error:  # every request of the batch fails; the worker lives on
            log.exception("generation failed for %s (batch of %d)", model.id, len(batch))
            for request in batch:
                request.finished = True
                request.emit(Failed(error))
            return
        for row in rows.rows:
            row.finish()
        tokens = sum(r.tokens for r in batch)
        with self._stats_lock:  # workers of different owners finish batches concurrently
            self.stats["batches"] += 1
            self.stats["rows"] += len(batch)
            self.stats["tokens"] += tokens
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
        log.debug("%s: batch of %d, %d tokens in %.2fs", model.id, len(batch), tokens, time.perf_counter() - began)

    def close(self) -> None:
        for worker in self._workers.values():
            worker.close()


async def cancel_when_gone(request, generation: GenRequest) -> None:
    """Cancel ``generation`` if the client of the Starlette ``request`` goes away before it ends (a streaming
    response learns it from Starlette instead: its generator is cancelled)."""
    while not generation.finished:
        if await request.is_disconnected():
            generation.cancel()
            return
        await asyncio.sleep(0.2)
