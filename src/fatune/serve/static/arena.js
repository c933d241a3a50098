// The arena page: one prompt, two anonymous answers, one vote, then the names and the leaderboard.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ui = {
    form: $("battle-form"), prompt: $("prompt"), system: $("system"), battle: $("battle"), error: $("error"),
    answers: [$("answer-left"), $("answer-right")], labels: [$("label-left"), $("label-right")],
    votes: [...document.querySelectorAll("button[data-winner]")], reveal: $("reveal"),
    board: $("leaderboard"), summary: $("board-summary"), winRateBox: $("win-rate-box"), winRate: $("win-rate"),
  };
  const SIDE_NAMES = ["مدل الف", "مدل ب"];

  let battleId = null; // the battle awaiting a vote, if any

  /** A model id inside Persian text: its own LTR island, so "qlora-v2" is not reordered. */
  function modelName(id) {
    const bdi = document.createElement("bdi");
    bdi.dir = "ltr";
    bdi.className = "model-id";
    bdi.textContent = id;
    return bdi;
  }

  function setVoting(enabled) {
    for (const button of ui.votes) button.disabled = !enabled;
  }

  function resetSides() {
    ui.labels.forEach((label, i) => label.replaceChildren(SIDE_NAMES[i]));
    ui.reveal.hidden = true;
    ui.reveal.replaceChildren();
  }

  async function battle() {
    const prompt = ui.prompt.value.trim();
    if (!prompt || ui.battle.disabled) return;
    const system = ui.system.value.trim() || null;
    FA.showError(ui.error, null);
    battleId = null;
    setVoting(false);
    resetSides();
    ui.battle.disabled = true;
    for (const el of ui.answers) {
      el.replaceChildren();
      el.classList.add("pending");
      delete el.dataset.done;
    }
    try {
      const body = await FA.apiJson("/arena/battle", { prompt, system });
      body.answers.forEach((text, i) => {
        FA.renderText(ui.answers[i], text);
        ui.answers[i].dataset.done = "true";
      });
      battleId = body.battle_id;
      setVoting(true);
    } catch (err) {
      FA.showError(ui.error, err);
    } finally {
      for (const el of ui.answers) el.classList.remove("pending");
      ui.battle.disabled = false;
    }
  }

  async function vote(winner) {
    if (!battleId) return;
    const id = battleId;
    battleId = null; // one vote per battle, even on a double click
    setVoting(false);
    try {
      const body = await FA.apiJson("/arena/vote", { battle_id: id, winner });
      reveal(body.models, winner);
      await loadBoard();
    } catch (err) {
      FA.showError(ui.error, err);
    }
  }

  function reveal(models, winner) {
    const parts = [];
    models.forEach((model, i) => {
      ui.labels[i].replaceChildren(`${SIDE_NAMES[i]}: `, modelName(model));
      if (i) parts.push(" · ");
      parts.push(`${SIDE_NAMES[i]}: `, modelName(model));
    });
    ui.reveal.replaceChildren(...parts);
    ui.reveal.dataset.winner = winner;
    ui.reveal.hidden = false;
    for (const button of ui.votes) button.classList.toggle("chosen", button.dataset.winner === winner);
  }

  function cell(tag, content, title) {
    const el = document.createElement(tag);
    if (content instanceof Node) el.append(content);
    else el.textContent = content;
    if (title) el.title = title;
    return el;
  }

  function formatInterval(ci) {
    if (!Array.isArray(ci) || ci.length !== 2 || ci.some((x) => typeof x !== "number")) return "—";
    // "low تا high" (low to high) in words rather than "low – high": a dash range in a right-to-left
    // cell shows the numbers in an order readers of either direction can take the wrong way round.
    return `${FA.numberFa.format(ci[0])} تا ${FA.numberFa.format(ci[1])}`;
  }

  async function loadBoard() {
    let body;
    try {
      body = await FA.apiJson("/arena/leaderboard");
    } catch (err) {
      FA.showError(ui.error, err);
      return;
    }
    const ratings = Object.entries(body.ratings || {}); // the server sends them best first
    const rows = ratings.map(([model, r], i) => {
      const tr = document.createElement("tr");
      tr.append(
        cell("td", FA.numberFa.format(i + 1)),
        cell("td", modelName(model)),
        cell("td", typeof r.rating === "number" ? FA.numberFa.format(r.rating) : "—", String(r.rating)),
        cell("td", formatInterval(r.ci95)),
        cell("td", FA.numberFa.format(r.votes || 0)),
      );
      return tr;
    });
    ui.board.tBodies[0].replaceChildren(...rows);
    ui.summary.textContent = body.votes
      ? `${FA.numberFa.format(body.votes)} رأی، ${FA.numberFa.format(body.ties || 0)} تساوی`
      : "هنوز رأیی ثبت نشده است.";
    renderWinRate(ratings.map(([model]) => model), body.win_rate || {});
  }

  function renderWinRate(models, winRate) {
    ui.winRateBox.hidden = models.length < 2;
    const head = document.createElement("tr");
    head.append(cell("th", ""), ...models.map((m) => cell("th", modelName(m))));
    const rows = models.map((a) => {
      const tr = document.createElement("tr");
      tr.append(cell("th", modelName(a)));
      for (const b of models) {
        const rate = winRate[a] ? winRate[a][b] : null;
        tr.append(cell("td", a === b || typeof rate !== "number" ? "—" : FA.percentFa.format(rate)));
      }
      return tr;
    });
    const thead = document.createElement("thead");
    thead.append(head);
    const tbody = document.createElement("tbody");
    tbody.append(...rows);
    ui.winRate.replaceChildren(thead, tbody);
  }

  ui.form.addEventListener("submit", (e) => { e.preventDefault(); battle(); });
  ui.prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      battle();
    }
  });
  for (const button of ui.votes) button.addEventListener("click", () => vote(button.dataset.winner));

  loadBoard();
  ui.prompt.focus();
})();
