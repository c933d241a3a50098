// The chat page: pick a model, talk to it; answers stream in token by token.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    model: $("model"), temperature: $("temperature"), maxTokens: $("max-tokens"), system: $("system"),
    reset: $("reset"), error: $("error"), messages: $("messages"), composer: $("composer"),
    input: $("input"), send: $("send"), stop: $("stop"),
  };
  const MODEL_STORAGE = "fatune-model";

  function remembered() {
    try { return localStorage.getItem(MODEL_STORAGE); } catch { return null; }
  }

  let history = []; // finished turns only, {role, content}; the system prompt is added per request
  let controller = null; // AbortController of the answer being streamed, if any

  async function loadModels() {
    try {
      const body = await FA.apiJson("/v1/models");
      const ids = (body.data || []).map((m) => m.id);
      ui.model.replaceChildren(...ids.map((id) => new Option(id, id)));
      const saved = remembered();
      if (saved && ids.includes(saved)) ui.model.value = saved;
      if (!ids.length) FA.showError(ui.error, "سرور هیچ مدلی ندارد (no models served).");
    } catch (err) {
      FA.showError(ui.error, err);
    }
  }

  function scrollToEnd() {
    ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function addMessage(role, text) {
    const el = document.createElement("div");
    el.className = `message ${role}`;
    // Direction per message, decided by the browser from the text (see index.html). Nothing but the
    // message text goes inside (the role shows as colour and side), so nothing else can tip the choice.
    el.dir = "auto";
    FA.renderText(el, text);
    ui.messages.append(el);
    scrollToEnd();
    return el;
  }

  function setBusy(busy) {
    ui.send.disabled = busy;
    ui.send.hidden = busy;
    ui.stop.hidden = !busy;
  }

  function numberOr(input, fallback) {
    const value = Number(input.value);
    return input.value !== "" && Number.isFinite(value) ? value : fallback;
  }

  async function send() {
    const text = ui.input.value.trim();
    if (controller || !text) return;
    const model = ui.model.value;
    if (!model) {
      FA.showError(ui.error, "ابتدا یک مدل انتخاب کنید (choose a model).");
      return;
    }
    FA.showError(ui.error, null);
    ui.input.value = "";

    const turns = history; // reset() swaps in a new array: a stopped answer must not land in it
    const system = ui.system.value.trim();
    const messages = [...(system ? [{ role: "system", content: system }] : []), ...turns,
      { role: "user", content: text }];
    const question = addMessage("user", text);
    const answer = addMessage("assistant", "");
    answer.title = model;
    answer.dataset.model = model;
    answer.dataset.done = "false";
    answer.classList.add("pending");

    let reply = "";
    let finish = null;
    let frame = 0; // re-render at most once per animation frame, not once per token
    const render = () => { frame = 0; FA.renderText(answer, reply); scrollToEnd(); };

    controller = new AbortController();
    setBusy(true);
    try {
      const response = await FA.apiFetch("/v1/chat/completions", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({
          model, messages, stream: true,
          temperature: numberOr(ui.temperature, 0),
          max_tokens: Math.max(1, Math.round(numberOr(ui.maxTokens, 256))),
        }),
        signal: controller.signal,
      });
      for await (const chunk of FA.sseEvents(response)) {
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) continue;
        if (choice.delta && choice.delta.content) {
          reply += choice.delta.content;
          if (!frame) frame = requestAnimationFrame(render);
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    } catch (err) {
      if (err.name === "AbortError") {
        finish = "stopped"; // keep what arrived: it is what the user saw
      } else {
        cancelAnimationFrame(frame);
        answer.classList.remove("pending");
        answer.classList.add("failed");
        question.classList.add("failed");
        FA.renderText(answer, reply);
        FA.showError(ui.error, err);
        if (!ui.input.value) ui.input.value = text; // so the user can resend it
        controller = null;
        setBusy(false);
        return;
      }
    }
    cancelAnimationFrame(frame);
    render();
    turns.push({ role: "user", content: text }, { role: "assistant", content: reply });
    answer.classList.remove("pending");
    if (finish) answer.dataset.finish = finish; // "length" shows a "cut off" mark (app.css)
    if (finish === "length") answer.title = `${model} · بریده شد: به حداکثر توکن رسید (max_tokens)`;
    answer.dataset.done = "true";
    controller = null;
    setBusy(false);
    ui.input.focus();
  }

  function reset() {
    if (controller) controller.abort();
    history = [];
    ui.messages.replaceChildren();
    FA.showError(ui.error, null);
    ui.input.focus();
  }

  ui.composer.addEventListener("submit", (e) => { e.preventDefault(); send(); });
  ui.input.addEventListener("keydown", (e) => {
    // Enter sends, Shift+Enter is a new line; never while an input method is composing a character.
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  ui.stop.addEventListener("click", () => { if (controller) controller.abort(); });
  ui.reset.addEventListener("click", reset);
  ui.model.addEventListener("change", () => {
    try { localStorage.setItem(MODEL_STORAGE, ui.model.value); } catch { /* storage disabled */ }
  });

  loadModels();
  ui.input.focus();
})();
