"""Chat templates shared by training, generation and evaluation, so the formats can never disagree.

A template turns messages into ``Piece``s: bits of text tagged with the turn they belong to. ``render``
tokenizes the pieces and decides the labels; generation renders the same pieces with the generation
prompt. Three templates exist:

* ``gemma``: Gemma's own turns (``<start_of_turn>user`` / ``<start_of_turn>model``). Gemma rejects
  the system role, so a system message is folded into the first user turn, as Gemma 3's template does.
* ``chatml``: the seed's layout (``philschmid/gemma-tokenizer-chatml``): ``system``/``user``/
  ``assistant`` turns between the tokenizer's own start- and end-of-turn tokens, so no new embeddings.
* ``hf``: the tokenizer's own Jinja template, with the assistant spans found by rendering prefixes.

``auto`` picks ``hf`` when the tokenizer has a template, else ``gemma`` for Gemma-family tokenizers
(the Gemma 3 tokenizer converted from GGUF has no template).
Like Gemma's own template, ``gemma`` and ``chatml`` trim each message's content.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from fatune.errors import FatuneError

TEMPLATE_NAMES = ("auto", "gemma", "chatml", "hf")
# Turn delimiters that already exist as special tokens in common vocabularies, in order of preference.
TURN_TOKEN_PAIRS = (("<start_of_turn>", "<end_of_turn>"), ("<|im_start|>", "<|im_end|>"))


@dataclass(frozen=True)
class Piece:
    """A span of the rendered conversation.

    ``markup``: template text (special tokens are recognized when tokenizing it); otherwise it is
    message content, where text that looks like a special token stays plain text.
    ``role``: the turn whose content or end-of-turn this is; ``None`` for headers, BOS and newlines,
    which are never trained.
    """

    text: str
    markup: bool
    role: str | None = None


class ChatTemplate:
    name: str
    end_of_turn: str  # the token generation stops at

    def pieces(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> list[Piece]:
        raise NotImplementedError

    @property
    def jinja(self) -> str | None:
        """An equivalent Jinja chat template, saved with tokenizers of trained models."""
        return None


class TurnTemplate(ChatTemplate):
    """``<start>ROLE\\ncontent<end>\\n`` turns: the shape of both ``gemma`` and ``chatml``."""

    def __init__(self, name: str, start: str, end: str, bos: str | None, roles: dict[str, str],
                 fold_system: bool):
        self.name, self.start, self.end_of_turn, self.bos = name, start, end, bos
        self.roles, self.fold_system = roles, fold_system

    def pieces(self, messages, add_generation_prompt=False):
        messages = [{"role": m["role"], "content": m["content"].strip()} for m in messages]
        if self.fold_system and messages and messages[0]["role"] == "system":
            system, messages = messages[0]["content"], messages[1:]
            if messages:
                messages[0] = {"role": messages[0]["role"], "content": f"{system}\n\n{messages[0]['content']}"}
        out = [Piece(self.bos, markup=True)] if self.bos else []
        for message in messages:
            role = message["role"]
            out += [Piece(f"{self.start}{self.roles[role]}\n", markup=True),
                    Piece(message["content"], markup=False, role=role),
                    Piece(self.end_of_turn, markup=True, role=role),
                    Piece("\n", markup=True)]
        if add_generation_prompt:
            out.append(Piece(f"{self.start}{self.roles['assistant']}\n", markup=True))
        return out

    @property
    def jinja(self) -> str:
        bos = "{{ bos_token }}" if self.bos else ""
        role = "('{}' if m['role'] == 'assistant' else m['role'])".format(self.roles["assistant"])
        if self.fold_system:
            head = ("{%- if messages and messages[0]['role'] == 'system' -%}"
                    "{%- set prefix = messages[0]['content'] | trim + '\\n\\n' -%}{%- set turns = messages[1:] -%}"
                    "{%- else -%}{%- set prefix = '' -%}{%- set turns = messages -%}{%- endif -%}")
            content = "(prefix if loop.first else '') + m['content'] | trim"
        else:
            head, content = "{%- set turns = messages -%}", "m['content'] | trim"
        return (f"{bos}{head}{{%- for m in turns -%}}{{{{ '{self.start}' + {role} + '\\n' + {content} + "
                f"'{self.end_of_turn}' + '\\n' }}}}{{%- endfor -%}}{{%- if add_generation_prompt -%}}"
                f"{{{{ '{self.start}{self.roles['assistant']}\\n' }}}}{{%- endif -%}}")


class HFTemplate(ChatTemplate):
    """The tokenizer's own Jinja template. Assistant spans are the text that rendering one more message
    adds after the generation prompt; this needs a template whose renders of prefixes are prefixes."""

    name = "hf"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        turns = _turn_tokens(tokenizer)
        self.end_of_turn = turns[1] if turns else tokenizer.eos_token

    def _text(self, messages, add_generation_prompt):
        try:
            return self.tokenizer.apply_chat_template(list(messages), tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)
        except Exception as error:  # jinja raises on e.g. the system role in Gemma 2's template
            raise FatuneError(f"the tokenizer's own chat template rejects this conversation ({error}); "
                              "use template 'gemma' (folds the system message into the first user turn) "
                              "or 'chatml'") from None

    def pieces(self, messages, add_generation_prompt=False):
        out, done = [], ""
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before, after = self._text(messages[:i], True), self._text(messages[: i + 1], False)
            if not before.startswith(done) or not after.startswith(before):
                raise FatuneError("the tokenizer's chat template does not render prefixes of a conversation "
                                  "as prefixes, so assistant turns cannot be located; use template 'gemma' or 'chatml'")
            out.append(Piece(before[len(done):], markup=True))
            span = after[len(before):]
            content = message["content"].strip()
            at = span.find(content)
            if at < 0:  # the template rewrote the content: train on the whole span as markup
                out.append(Piece(span.rstrip(), markup=True, role="assistant"))
            else:
                tail = span[at + len(content):]
                out += [Piece(span[:at], markup=True, role="assistant") if at else None,
                        Piece(content, markup=False, role="assistant"),
                        Piece(tail.rstrip(), markup=True, role="assistant") if tail.strip() else None]
            out.append(Piece(span[len(span.rstrip()):], markup=True))
            done = after
        rest = self._text(messages, add_generation_prompt)
        out.append(Piece(rest[len(done):], markup=True))
        return [p for p in out if p is not None and p.text]

    @property
    def jinja(self) -> str:
        return self.tokenizer.chat_template


def _has_token(tokenizer, token: str) -> bool:
    # get_vocab() builds a dict of the whole vocabulary (262k entries for Gemma): ~100 ms per call.
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return backend.token_to_id(token) is not None
    token_id = tokenizer.convert_tokens_to_ids(token)
    return token_id is not None and token_id != tokenizer.unk_token_id


def _turn_tokens(tokenizer) -> tuple[str, str] | None:
    for start, end in TURN_TOKEN_PAIRS:
        if _has_token(tokenizer, start) and _has_token(tokenizer, end):
            return start, end
    return None


def get_template(name: str | ChatTemplate, tokenizer) -> ChatTemplate:
    """Build the named template for ``tokenizer`` (``auto``, ``gemma``, ``chatml`` or ``hf``)."""
    if isinstance(name, ChatTemplate):
        return name
    if name not in TEMPLATE_NAMES:
        raise FatuneError(f"unknown template {name!r}; choose one of {', '.join(TEMPLATE_NAMES)}")
    turns = _turn_tokens(tokenizer)
    if name == "auto":
        if getattr(tokenizer, "chat_template", None):
            name = "hf"
        elif turns and turns[0] == "<start_of_turn>":
            name = "gemma"
        else:
            raise FatuneError("this tokenizer has no chat template and is not Gemma-family; "
                              "set the template to 'chatml' or 'gemma' explicitly")
    if name == "hf":
        if not getattr(tokenizer, "chat_template", None):
            raise FatuneError("template 'hf' needs a tokenizer with its own chat template; this one has none "
                              "(use 'gemma' or 'chatml')")
        return HFTemplate(tokenizer)
    if turns is None:
        raise FatuneError(f"template {name!r} needs start/end-of-turn special tokens "
                          f"({' or '.join('/'.join(t) for t in TURN_TOKEN_PAIRS)}); this tokenizer has neither")
    roles = {"system": "system", "user": "user", "assistant": "assistant"}
    if name == "gemma":
        roles["assistant"] = "model"
    return TurnTemplate(name, turns[0], turns[1], tokenizer.bos_token, roles, fold_system=name == "gemma")
