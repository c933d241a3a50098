"""The arena's HTTP routes: a battle (two anonymous answers to one prompt), a human's vote, the leaderboard.

``POST /arena/battle`` draws two different served models at random, in random order (the sides say
nothing), and generates both answers concurrently through the batcher with the ``sample`` preset's
settings (temperature 0.7, top_p 0.9), so that battles between the same pair vary. Battles live in
memory (the last 10,000); ``POST /arena/vote`` appends one vote per battle to the votes file
(``eval.votes.VoteLog``: one fsynced line, thread-safe) and reveals the names; ``GET /arena/leaderboard``
ranks the models from that file (``eval.arena.leaderboard``, Bradley-Terry with bootstrap intervals).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import OrderedDict
from pathlib import Path

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from fatune.errors import FatuneError
from fatune.serve.batching import Sampling, cancel_when_gone
from fatune.serve.schema import Limits, RequestError, over_limit, read_json_body

ARENA_SAMPLING = Sampling(True, 0.7, 0.9)  # the "sample" preset: battles between the same pair vary
MAX_BATTLES = 10_000


def add_arena_routes(api: APIRouter, registry, submit, limits: Limits, votes_path, vote_log) -> None:
    """Add the arena's routes to ``api``; ``submit(model_id, messages, max_tokens, sampling)`` queues one
    generation (``app.create_app``'s), ``vote_log`` is the ``VoteLog`` of ``votes_path`` (None: no votes)."""
    battles: OrderedDict[str, dict] = OrderedDict()

    @api.post("/arena/battle")
    async def battle(request: Request):
        body = await read_json_body(request, limits)
        prompt, system = _arena_text(body, "prompt", limits), _arena_text(body, "system", limits, required=False)
        max_tokens = body.get("max_tokens", limits.default_max_tokens) if isinstance(body, dict) else None
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise RequestError("max_tokens: must be a positive integer", "max_tokens")
        if max_tokens > limits.max_tokens:
            raise over_limit("max_tokens", max_tokens, "max_tokens", limits.max_tokens, param="max_tokens")
        if len(registry) < 2:
            raise RequestError("the arena needs at least two models; start `fatune serve` with two or more")
        pair = random.sample(registry.ids(), 2)  # random models in random order: the sides reveal nothing
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        generations, watchers = [], []
        try:
            for model_id in pair:  # both queued before either is awaited: they generate concurrently
                generations.append(await submit(model_id, messages, max_tokens, ARENA_SAMPLING))
            watchers = [asyncio.create_task(cancel_when_gone(request, g)) for g in generations]
            answers = [d.text for d in await asyncio.gather(*(g.result() for g in generations))]
        finally:
            for task in watchers:
                task.cancel()
            for generation in generations:  # no-op when done; stops the first when the second was refused (429)
                generation.cancel()
        battle_id = uuid.uuid4().hex
        battles[battle_id] = {"models": pair, "prompt": prompt, "answers": answers, "voted": False}
        while len(battles) > MAX_BATTLES:
            battles.popitem(last=False)
        return {"battle_id": battle_id, "answers": answers}

    @api.post("/arena/vote")
    async def vote(request: Request):
        from fatune.eval.votes import WINNERS, make_vote

        body = await read_json_body(request, limits)
        body = body if isinstance(body, dict) else {}
        if vote_log is None:
            raise RequestError("this server keeps no votes file (start `fatune serve` with --votes FILE)")
        record = battles.get(str(body.get("battle_id")))
        if record is None:
            raise RequestError("battle_id: no such battle (battles are kept in memory, the last 10,000)",
                               "battle_id", status=404, code="battle_not_found")
        winner = body.get("winner")
        if winner not in WINNERS:
            raise RequestError(f"winner: must be one of {', '.join(WINNERS)}", "winner")
        if record["voted"]:
            raise RequestError("this battle has its vote already", "battle_id", status=409, code="already_voted")
        record["voted"] = True  # before the write: a second vote arriving meanwhile is refused
        try:
            entry = make_vote(tuple(record["models"]), winner, record["prompt"], tuple(record["answers"]))
            await run_in_threadpool(vote_log.append, entry)
        except BaseException:
            record["voted"] = False
            raise
        return {"models": record["models"]}

    @api.get("/arena/leaderboard")
    async def leaderboard():
        return await run_in_threadpool(_leaderboard, votes_path)


def _arena_text(body, field: str, limits: Limits, required: bool = True) -> str:
    value = body.get(field) if isinstance(body, dict) else None
    if value is None or (not required and isinstance(value, str) and not value.strip()):
        if required:
            raise RequestError(f"{field}: missing", field)
        return ""
    if not isinstance(value, str) or not value.strip():
        raise RequestError(f"{field}: must be a non-empty string", field)
    if len(value) > limits.max_message_chars:
        raise over_limit(f"{field}'s length in characters", len(value), "max_message_chars",
                         limits.max_message_chars, param=field)
    return value


def _leaderboard(votes_path) -> dict:
    from fatune.eval.arena import leaderboard
    from fatune.eval.votes import read_votes

    try:
        votes = read_votes(votes_path) if votes_path is not None and Path(votes_path).exists() else []
    except FatuneError as error:  # a votes file edited by hand: say what is wrong with it
        raise RequestError(f"the votes file cannot be read: {error}", status=500, type="server_error") from None
    if not votes:
        return {"ratings": {}, "win_rate": {}, "votes": 0, "ties": 0}
    return leaderboard(votes, bootstrap=200)
