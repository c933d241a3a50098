"""The tokenizer part of a GGUF file: vocabulary, scores, token types, special ids and chat template.

A GGUF carries no ``tokenizer.json``; llama.cpp rebuilds the tokenizer from ``tokenizer.ggml.*`` keys.
Two kinds of HF tokenizer are written, each the way llama.cpp's ``convert_hf_to_gguf.py`` and
``gguf-py/gguf/vocab.py`` write them:

* SentencePiece-style BPE with byte fallback (Gemma's own tokenizer, also as transformers rebuilds
  it from Gemma 3 270M's GGUF): ``tokenizer.ggml.model = "llama"``. llama.cpp's SPM tokenizer needs no
  merges: it repeatedly merges the adjacent pair whose joined text is the vocabulary entry with the
  highest *score*. SentencePiece BPE scores a piece by minus its merge rank, and the pieces are stored in
  that order, so a normal token scores minus its rank among the normal tokens (the same order as the
  scores in Gemma 3 270M's GGUF, checked in tests/integration/test_gguf_export.py).
  Byte pieces ``<0xNN>`` score 0, added tokens -1000 (as llama.cpp writes them). Gemma's
  SentencePiece model stores runs of two or more spaces as user-defined pieces spelled with real
  spaces, which HF spells ``▁▁``; they are written back with spaces (transformers' GGUF reader undoes
  exactly this in ``gemma_tokenizer``).
* Byte-level BPE (GPT-2 style, like fatune's tiny test tokenizer): ``tokenizer.ggml.model = "gpt2"``
  with the merges, and ``tokenizer.ggml.pre = "gpt-2"`` for the GPT-2 split regex that HF's
  ``ByteLevel`` pre-tokenizer uses.

Token types follow llama.cpp: added special tokens are CONTROL (``<bos>``, ``<end_of_turn>``, also
``<unk>``, as Gemma's GGUFs mark it), other added tokens USER_DEFINED (matched whole in the text), byte
pieces BYTE, rows of the embedding beyond the tokenizer ``[PADn]`` / UNUSED (llama.cpp's padding).
"""

from __future__ import annotations

import json
import re

from fatune.errors import FatuneError

BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
ADDED_SCORE = -1000.0  # llama.cpp's score for control and user-defined tokens


def tokenizer_kind(tokenizer) -> str:
    """``llama`` (SentencePiece-style BPE with byte fallback) or ``gpt2`` (byte-level BPE); else an error."""
    spec = _spec(tokenizer)
    model = spec["model"]
    if model.get("type") != "BPE":
        raise FatuneError(f"GGUF export: a {model.get('type')} tokenizer is not supported (BPE only, as Gemma's)")
    if model.get("byte_fallback"):
        return "llama"
    if "ByteLevel" in json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")]):
        return "gpt2"
    raise FatuneError("GGUF export: the tokenizer is neither SentencePiece-style BPE with byte fallback nor "
                      "byte-level BPE, so llama.cpp could not rebuild it")


def add_vocab(writer, tokenizer, n_rows: int, chat_template: str | None, end_of_turn: str | None,
              add_bos: bool) -> None:
    """Write the ``tokenizer.*`` keys. ``n_rows``: the embedding's rows (the model's vocabulary size)."""
    import gguf

    kind = tokenizer_kind(tokenizer)
    spec = _spec(tokenizer)
    vocab = tokenizer.get_vocab()
    if len(vocab) > n_rows:
        raise FatuneError(f"GGUF export: the tokenizer has {len(vocab)} tokens but the model only {n_rows} "
                          "embedding rows")
    by_id = {index: token for token, index in vocab.items()}
    added = {item["id"]: item for item in spec.get("added_tokens", [])}
    tokens, scores, types = [], [], []
    rank = 0
    for index in range(n_rows):
        token = by_id.get(index)
        if token is None:  # embedding rows no token uses (a padded vocabulary), as llama.cpp pads them
            tokens.append(f"[PAD{index}]"), scores.append(ADDED_SCORE), types.append(gguf.TokenType.UNUSED)
        elif kind == "llama" and BYTE_PIECE.fullmatch(token):
            tokens.append(token), scores.append(0.0), types.append(gguf.TokenType.BYTE)
        elif index in added:
            tokens.append(token), scores.append(ADDED_SCORE)
            types.append(gguf.TokenType.CONTROL if added[index]["special"] else gguf.TokenType.USER_DEFINED)
        elif kind == "llama" and len(token) > 1 and set(token) == {"▁"}:
            tokens.append(" " * len(token)), scores.append(ADDED_SCORE), types.append(gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(token), scores.append(-float(rank)), types.append(gguf.TokenType.NORMAL)
            rank += 1
    writer.add_tokenizer_model(kind)
    if kind == "llama":
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        # A SentencePiece model with a dummy prefix says so with a Prepend("▁") normalizer; Gemma's has none.
        writer.add_add_space_prefix('"Prepend"' in json.dumps(spec.get("normalizer")))
    else:
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_list(tokens)
        writer.add_token_merges([" ".join(pair) if isinstance(pair, list) else pair
                                 for pair in spec["model"]["merges"]])
    writer.add_token_types(types)
    for name, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None:
            add(token_id)
    if end_of_turn is not None and end_of_turn in vocab:
        # llama.cpp stops at end-of-generation tokens; <end_of_turn> is Gemma's end of a chat turn.
        writer.add_eot_token_id(vocab[end_of_turn])
    # The run trained every conversation after BOS; runtimes that build the prompt themselves (Ollama's
    # Go template has no BOS) rely on this flag to add it.
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(False)
    if chat_template:
        writer.add_chat_template(chat_template)


def _spec(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise FatuneError("GGUF export needs a fast (tokenizer.json) tokenizer")
    return json.loads(backend.to_str())
