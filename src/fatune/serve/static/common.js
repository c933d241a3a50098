// Shared helpers for the chat and arena pages: API calls (auth header, 401 -> ask for the key, error
// JSON), server-sent-event parsing, and safe rendering of model text.
//
// Plain classic scripts sharing one global (`FA`), not ES modules: module scripts are refused when the
// server sends .js with a wrong MIME type (Python's `mimetypes` reads it from the Windows registry,
// which is sometimes text/plain), and there is no build step to bundle them anyway.
"use strict";

const FA = (() => {
  const KEY_STORAGE = "fatune-api-key";

  /** An API failure with the server's own message (from {"error": {"message", "type", "code"}}). */
  class ApiError extends Error {
    constructor(message, status = 0, type = null, code = null) {
      super(message);
      this.name = "ApiError";
      this.status = status;
      this.type = type;
      this.code = code;
    }
  }

  function storedKey() {
    try {
      return sessionStorage.getItem(KEY_STORAGE) || "";
    } catch {
      return ""; // storage disabled (some private modes): the user is asked again on each 401
    }
  }

  function storeKey(key) {
    try {
      if (key) sessionStorage.setItem(KEY_STORAGE, key);
      else sessionStorage.removeItem(KEY_STORAGE);
    } catch { /* see storedKey */ }
  }

  // One question at a time: the chat page may fire several requests at once (models list, a message),
  // and every one of them gets the 401; they all wait for the same answer.
  let pendingKey = null;

  function askKey(wrong) {
    if (!pendingKey) {
      pendingKey = new Promise((resolve) => {
        // prompt() blocks the page, which is what we want here: nothing works without the key.
        const ask = "کلید API این سرور را وارد کنید (API key):";
        const key = window.prompt(wrong ? `کلید نادرست بود (wrong key). ${ask}` : ask, "");
        resolve((key || "").trim());
      }).finally(() => { pendingKey = null; });
    }
    return pendingKey;
  }

  /** Turn a failed response into an ApiError, preferring the server's error JSON to the bare status. */
  async function errorFrom(response) {
    let text = "";
    try {
      text = await response.text();
      const body = JSON.parse(text);
      const err = body && body.error;
      if (err && typeof err.message === "string") {
        return new ApiError(err.message, response.status, err.type ?? null, err.code ?? null);
      }
      if (body && typeof body.detail === "string") return new ApiError(body.detail, response.status);
    } catch { /* not JSON: fall through */ }
    const detail = text && text.length < 300 ? `: ${text}` : "";
    return new ApiError(`HTTP ${response.status} ${response.statusText}${detail}`, response.status);
  }

  /**
   * fetch() with the stored API key. On a 401 ask for the key once, keep it in sessionStorage and retry;
   * a second 401 (wrong key) forgets it, so that the next request asks again. Non-2xx -> ApiError.
   */
  async function apiFetch(path, options = {}) {
    for (let attempt = 0; ; attempt++) {
      const sent = storedKey();
      const headers = { ...(options.headers || {}) };
      if (sent) headers.Authorization = `Bearer ${sent}`;
      let response;
      try {
        response = await fetch(path, { ...options, headers });
      } catch (err) {
        if (err.name === "AbortError") throw err;
        throw new ApiError(`سرور در دسترس نیست (${err.message})`);
      }
      if (response.status === 401 && attempt < 2) {
        if (storedKey() !== sent) continue; // another request stored a new key meanwhile: just retry
        if (attempt === 1) storeKey(""); // the key we were given is wrong
        const key = await askKey(attempt === 1);
        if (!key) throw await errorFrom(response);
        storeKey(key);
        continue;
      }
      if (!response.ok) throw await errorFrom(response);
      return response;
    }
  }

  /** GET or POST JSON and return the parsed body. */
  async function apiJson(path, body = undefined) {
    const options = body === undefined ? {} : {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    };
    const response = await apiFetch(path, options);
    return response.json();
  }

  /**
   * Read a text/event-stream body and yield each event's data parsed as JSON; stop at `[DONE]`.
   *
   * Read by hand from fetch()'s ReadableStream because EventSource can only GET (the chat request is a
   * POST with a JSON body) and cannot send an Authorization header.
   */
  async function* sseEvents(response) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder("utf-8"); // stream mode: a Persian letter may be split across chunks
    let buffer = "";
    let data = [];
    try {
      for (;;) {
        const { value, done } = await reader.read();
        buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
        const lines = buffer.split(/\r\n|\r|\n/);
        buffer = done ? "" : lines.pop(); // the last piece may be an unfinished line
        for (const line of lines) {
          if (line === "") { // a blank line ends an event
            if (data.length) {
              const payload = data.join("\n");
              data = [];
              if (payload === "[DONE]") return;
              const event = JSON.parse(payload);
              if (event && event.error) {
                throw new ApiError(event.error.message || String(event.error), 0, event.error.type, event.error.code);
              }
              yield event;
            }
          } else if (line.startsWith("data:")) {
            data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
          } // comments (": ping") and other fields are ignored
        }
        if (done) {
          if (data.length && data.join("\n") === "[DONE]") return;
          throw new ApiError("اتصال پیش از پایان پاسخ قطع شد (stream ended without [DONE])");
        }
      }
    } finally {
      // Also reached when the caller stops early: cancelling tells the server to stop generating.
      reader.cancel().catch(() => {});
    }
  }

  // --- rendering model text -------------------------------------------------------------------------
  // Everything goes through createElement/textContent, never innerHTML: model output is untrusted.
  // Code and URLs get dir="ltr": inside a right-to-left message their punctuation and order would
  // otherwise be reordered by the bidi algorithm. Elements with a dir attribute are also skipped when
  // the browser resolves the message's own dir="auto", so a message opening with a URL still reads RTL.

  // http(s) only, so no javascript: links; trailing punctuation (Latin and Persian) is left outside.
  const URL_RE = /https?:\/\/[^\s<>"'«»]+/g;
  const URL_TRAILING = /[.,;:!?)\]}،؛؟]+$/;

  function appendLinked(parent, text) {
    let last = 0;
    for (const match of text.matchAll(URL_RE)) {
      const url = match[0].replace(URL_TRAILING, "");
      if (!url.match(/^https?:\/\/./)) continue;
      parent.append(text.slice(last, match.index));
      const a = document.createElement("a");
      a.href = url;
      a.textContent = url;
      a.dir = "ltr";
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      parent.append(a);
      last = match.index + url.length;
    }
    parent.append(text.slice(last));
  }

  function appendInline(parent, text) {
    // `inline code` -> <code dir="ltr">; an odd backtick left over is shown as is.
    const parts = text.split(/`([^`\n]+)`/);
    parts.forEach((part, i) => {
      if (i % 2 === 1) {
        const code = document.createElement("code");
        code.dir = "ltr";
        code.textContent = part;
        parent.append(code);
      } else if (part) {
        appendLinked(parent, part);
      }
    });
  }

  /**
   * Replace `el`'s content with `text` rendered: ``` fences become <pre><code dir="ltr">, URLs links.
   * An unclosed fence (common mid-stream) runs to the end of the text.
   */
  function renderText(el, text) {
    el.replaceChildren();
    const pieces = text.split(/^```/m);
    pieces.forEach((piece, i) => {
      if (i % 2 === 0) {
        if (piece) appendInline(el, piece);
        return;
      }
      const newline = piece.indexOf("\n");
      const lang = newline < 0 ? "" : piece.slice(0, newline).trim();
      let body = newline < 0 ? "" : piece.slice(newline + 1);
      body = body.replace(/\n$/, "");
      const pre = document.createElement("pre");
      pre.dir = "ltr";
      const code = document.createElement("code");
      code.dir = "ltr";
      if (/^[\w+#.-]{1,20}$/.test(lang)) code.dataset.lang = lang;
      code.textContent = body;
      pre.append(code);
      el.append(pre);
      // the fence's own closing line break would otherwise leave a blank line after the block
      if (pieces[i + 1] !== undefined) pieces[i + 1] = pieces[i + 1].replace(/^[^\n]*\n?/, "");
    });
  }

  /** Show an error (or clear it with null) in a page's error box. */
  function showError(box, err) {
    if (!err) {
      box.hidden = true;
      box.textContent = "";
      return;
    }
    box.textContent = err instanceof Error ? err.message : String(err);
    box.hidden = false;
  }

  // Persian digits; no grouping: "۱۰۱۲" reads better than "۱٬۰۱۲" for a rating.
  const numberFa = new Intl.NumberFormat("fa-IR", { maximumFractionDigits: 0, useGrouping: false });
  const percentFa = new Intl.NumberFormat("fa-IR", { style: "percent", maximumFractionDigits: 0 });

  return { ApiError, apiFetch, apiJson, sseEvents, renderText, showError, numberFa, percentFa };
})();
