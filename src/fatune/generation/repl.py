"""``fatune chat``: an interactive REPL that streams answers and keeps the history.

Commands: ``/reset`` (forget the conversation), ``/system TEXT`` (set the system prompt and reset),
``/save FILE`` (append the conversation to FILE as one ``{"messages": [...]}`` JSON line, the format every
fatune command reads), ``/exit``. Works with a terminal or driven through stdin.

Right-to-left text: terminals without bidi support print Persian letters in logical order, left to
right and unjoined. With ``rtl`` on, each finished line is reshaped (joined letter forms) and reordered
for display (arabic-reshaper + python-bidi), so streaming is line by line. ``auto`` turns it on for a
terminal that is not known to do bidi itself (VTE >= 0.76 does), off when output is piped.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import IO

HELP = "commands: /reset, /system TEXT, /save FILE, /exit"


def rtl_wanted(mode: str, stream: IO) -> bool:
    if mode in ("on", "off"):
        return mode == "on"
    if not stream.isatty():
        return False
    return int(os.environ.get("VTE_VERSION", "0") or 0) < 7600  # VTE 0.76+ reorders bidi text itself


def display_line(line: str) -> str:
    """A logical-order line as it should appear on a terminal without bidi support."""
    try:
        import arabic_reshaper
        from bidi import get_display
    except ImportError:  # optional: pip install arabic-reshaper python-bidi
        return line
    return get_display(arabic_reshaper.reshape(line))


class _Printer:
    """Writes streamed text, line-buffered and reordered when ``rtl`` is on."""

    def __init__(self, out: IO, rtl: bool):
        self.out, self.rtl, self.pending = out, rtl, ""

    def write(self, text: str) -> None:
        if not self.rtl:
            self.out.write(text)
            self.out.flush()
            return
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self.out.write(display_line(line) + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.pending:
            self.out.write(display_line(self.pending) if self.rtl else self.pending)
        self.out.write("\n")
        self.out.flush()
        self.pending = ""


def run_repl(chat_model, *, system: str | None = None, preset: str = "greedy", rtl: str = "auto",
             stdin: IO = sys.stdin, stdout: IO = sys.stdout, **overrides) -> list[dict]:
    """Chat until ``/exit`` or end of input; returns the final conversation."""
    interactive = stdin.isatty()
    printer = _Printer(stdout, rtl_wanted(rtl, stdout))
    history: list[dict] = []

    def fresh() -> list[dict]:
        return [{"role": "system", "content": system}] if system else []

    history = fresh()
    if interactive:
        stdout.write(f"fatune chat ({HELP})\n")
    while True:
        if interactive:
            stdout.write("» ")
            stdout.flush()
        line = stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            break
        if text == "/reset":
            history = fresh()
            stdout.write("(conversation cleared)\n")
            continue
        if text.startswith("/system"):
            system = text[len("/system"):].strip() or None
            history = fresh()
            stdout.write(f"(system prompt {'set' if system else 'removed'}; conversation cleared)\n")
            continue
        if text.startswith("/save"):
            target = text[len("/save"):].strip()
            if not target:
                stdout.write("(usage: /save FILE)\n")
                continue
            with open(target, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"messages": history}, ensure_ascii=False) + "\n")
            stdout.write(f"(saved {len(history)} messages to {target})\n")
            continue
        if text.startswith("/"):
            stdout.write(f"(unknown command {text.split()[0]}; {HELP})\n")
            continue
        history.append({"role": "user", "content": text})
        started, answer = time.perf_counter(), ""
        for chunk in chat_model.stream(history, preset, **overrides):
            answer += chunk
            printer.write(chunk)
        printer.close()
        seconds = time.perf_counter() - started
        tokens = getattr(chat_model, "last_stream_tokens", 0)
        stdout.write(f"[{tokens} tokens, {tokens / seconds:.1f} tokens/s]\n" if seconds > 0 else "\n")
        history.append({"role": "assistant", "content": answer.strip()})
    return history
