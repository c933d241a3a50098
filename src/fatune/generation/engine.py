"""``ChatModel``: one generation path for every kind of run (base model, adapter, full model, P-Tuning).

Prompts are rendered with the same template code as training (``data.render_prompt``), normalized as
the run's training data was, left-padded into batches, and generated until the end-of-turn token, in
the run's precision (``Loaded.autocast``: bf16 autocast for a bf16 run).
Outputs never contain template tokens or echo the prompt.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Iterator, Sequence

import torch

from fatune.data.normalize import normalize_persian
from fatune.data.render import as_messages, render_prompt
from fatune.data.templates import get_template
from fatune.generation.loading import Loaded
from fatune.generation.presets import generation_settings
from fatune.generation.ptuning_cache import generate_ptuning_cached


class ChatModel:
    def __init__(self, loaded: Loaded):
        self.loaded = loaded
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.template = get_template(loaded.template, self.tokenizer)
        ids = [self.tokenizer.convert_tokens_to_ids(self.template.end_of_turn), self.tokenizer.eos_token_id]
        self.stop_ids = sorted({i for i in ids if i is not None and i != self.tokenizer.unk_token_id})

    # -- prompts -------------------------------------------------------------------------------------
    def normalized(self, conversation) -> list[dict]:
        """The messages as the run's training data looked (normalized when the run normalized)."""
        messages = as_messages(conversation)
        if not self.loaded.normalize:
            return list(messages)
        return [{"role": m["role"], "content": normalize_persian(m["content"], self.loaded.digits)} for m in messages]

    def prompt_ids(self, conversation) -> list[int]:
        return render_prompt(self.normalized(conversation), self.tokenizer, self.template)

    def _batch(self, prompts: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left padding: generation appends on the right, so every row must end at the same column."""
        width = max(map(len, prompts))
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        return ids.to(self.model.device), mask.to(self.model.device)

    # -- generation ----------------------------------------------------------------------------------
    def _generate(self, prompts, settings, use_cache: bool, streamer=None) -> torch.Tensor:
        ids, mask = self._batch(prompts)
        common = dict(eos_token_id=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id, streamer=streamer,
                      **settings)
        with torch.no_grad(), self.loaded.autocast():  # a bf16 run computes as it trained
            if self.loaded.is_prompt_learning and use_cache:
                return generate_ptuning_cached(self.model, ids, mask, **common)  # new tokens only
            # the reference path: plain PEFT / transformers generate; output starts with the prompt
            out = self.model.generate(input_ids=ids, attention_mask=mask, use_cache=use_cache, **common)
        return out[:, ids.shape[1]:]

    def _finish(self, conversation, prompt: list[int], new: list[int], seconds: float, limit: int) -> dict:
        output, stop_reason = [], "length"
        for token in new:
            output.append(token)
            if token in self.stop_ids:
                stop_reason = "end_of_turn"
                break
        else:
            output = [t for t in output if t != self.tokenizer.pad_token_id]
            stop_reason = "length" if len(output) >= limit else "eos"
        text = self.tokenizer.decode([t for t in output if t not in self.stop_ids], skip_special_tokens=True).strip()
        messages = list(as_messages(conversation)) + [{"role": "assistant", "content": text}]
        return {"messages": messages, "prompt_ids": prompt, "output_ids": output, "new_tokens": len(output),
                "seconds": round(seconds, 4), "stop_reason": stop_reason}

    def generate(self, conversations: Sequence, preset: str = "greedy", batch_size: int = 8, use_cache: bool = True,
                 **overrides) -> list[dict]:
        """Answer each conversation (its last turn is the user's); one result dict per conversation.

        ``seconds`` is the wall time of the batch the conversation was generated in."""
        settings = generation_settings(preset, **overrides)
        results = []
        for start in range(0, len(conversations), batch_size):
            chunk = conversations[start:start + batch_size]
            prompts = [self.prompt_ids(c) for c in chunk]
            began = time.perf_counter()
            new = self._generate(prompts, settings, use_cache).tolist()
            seconds = time.perf_counter() - began
            results += [self._finish(c, p, n, seconds, settings["max_new_tokens"]) for c, p, n in zip(chunk, prompts, new)]
        return results

    def chat(self, messages, preset: str = "greedy", **overrides) -> str:
        """The assistant's answer to ``messages`` (a list of messages ending with the user's turn)."""
        return self.generate([messages], preset, **overrides)[0]["messages"][-1]["content"]

    def stream(self, messages, preset: str = "greedy", **overrides) -> Iterator[str]:
        """Yield the answer's text as it is generated (one sequence; beam search is not streamed)."""
        settings = generation_settings(preset, **overrides)
        if settings.get("num_beams", 1) > 1:
            result = self.generate([messages], preset, **overrides)[0]
            self.last_stream_tokens = result["new_tokens"]
            yield result["messages"][-1]["content"]
            return
        streamer = _TextStreamer(self.tokenizer, self.stop_ids)
        prompt = self.prompt_ids(messages)
        worker = threading.Thread(target=self._stream_worker, args=(prompt, settings, streamer), daemon=True)
        worker.start()
        while (chunk := streamer.queue.get()) is not None:
            if isinstance(chunk, BaseException):
                raise chunk
            yield chunk
        worker.join()
        self.last_stream_tokens = streamer.count

    def _stream_worker(self, prompt, settings, streamer) -> None:
        try:
            self._generate([prompt], settings, use_cache=True, streamer=streamer)
        except BaseException as error:  # surface it in the consuming thread
            streamer.queue.put(error)
        finally:
            streamer.queue.put(None)


class _TextStreamer:
    """Receives token ids from ``generate`` and queues the newly decodable text (decoded from the start
    each time, so multi-token characters and joined Persian letters come out whole)."""

    def __init__(self, tokenizer, stop_ids):
        self.tokenizer, self.stop_ids = tokenizer, set(stop_ids)
        self.ids, self.sent, self.count, self.first, self.stopped = [], "", 0, True, False
        self.queue: queue.Queue = queue.Queue()

    def put(self, value) -> None:
        if self.first:  # generate first hands over the prompt
            self.first = False
            return
        for token in value.reshape(-1).tolist():
            if self.stopped:
                return
            self.count += 1
            if token in self.stop_ids:
                self.stopped = True
                return
            self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its other bytes
            return
        if len(text) > len(self.sent):
            self.queue.put(text[len(self.sent):].lstrip() if not self.sent else text[len(self.sent):])
            self.sent = text

    def end(self) -> None:
        pass
