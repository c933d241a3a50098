"""The arena: the votes file (``fatune.eval.votes``) and the Bradley-Terry leaderboard (``fatune.eval.arena``)."""

from __future__ import annotations

import json
import logging
import math
import threading

import numpy as np
import pytest

from fatune.errors import FatuneError
from fatune.eval import votes as votes_module
from fatune.eval.arena import (ELO_SCALE, bootstrap_ratings, fit_bradley_terry, leaderboard,
                               write_leaderboard)
from fatune.eval.votes import WINNERS, VoteLog, make_vote, read_votes

TIME = "2026-11-29T17:00:00+00:00"


def vote(left: str, right: str, winner: str) -> dict:
    return make_vote([left, right], winner, "سلام؟", [f"{left} says", f"{right} says"], time=TIME)


def simulate(betas: dict[str, float], n_votes: int, tie_share: float, seed: int) -> list[dict]:
    """Votes from the Bradley-Terry model, with ties by a rule that keeps the expected score BT's.

    A battle with ``p = P(i beats j)`` is a tie with probability ``2 * tie_share * p * (1 - p)`` and a
    win for i with ``p - tie_share * p * (1 - p)``, so i's expected score (a tie counting half) stays
    ``p``: the half-win fit is then unbiased. Ties alternate between ``tie`` and ``both_bad``."""
    rng = np.random.default_rng(seed)
    names = list(betas)
    votes, ties = [], 0
    for _ in range(n_votes):
        left, right = rng.choice(len(names), size=2, replace=False)
        p = 1 / (1 + math.exp(betas[names[right]] - betas[names[left]]))
        tie = tie_share * p * (1 - p)
        draw = rng.random()
        if draw < p - tie:
            winner = "left"
        elif draw < p + tie:
            winner = ("tie", "both_bad")[ties % 2]
            ties += 1
        else:
            winner = "right"
        votes.append(vote(names[left], names[right], winner))
    return votes


def test_bradley_terry_recovers_known_strengths():
    truth = {"base": 0.0, "lora": 0.5, "qlora": 1.0, "full": 2.0}  # natural-log units
    votes = simulate(truth, 3000, tie_share=0.5, seed=1)
    assert sum(v["winner"] in ("tie", "both_bad") for v in votes) > 200  # the tie rule is exercised
    fitted = fit_bradley_terry(votes)
    assert list(fitted) == ["full", "qlora", "lora", "base"]
    models, samples = bootstrap_ratings(votes, bootstrap=200, seed=0)
    reference = models.index("base")
    for model, beta in truth.items():
        if model == "base":
            continue
        differences = samples[:, models.index(model)] - samples[:, reference]
        low, high = np.percentile(differences, [2.5, 97.5])
        assert low <= ELO_SCALE * beta <= high, (model, low, ELO_SCALE * beta, high)
        assert low <= fitted[model] - fitted["base"] <= high
        assert high - low < 80  # 3000 votes pin a gap to within tens of points, not hundreds


def test_hand_checkable_ratings():
    three_to_one = [vote("A", "B", "left")] * 3 + [vote("A", "B", "right")]
    ratings = fit_bradley_terry(three_to_one, prior=1e-6)
    assert ratings["A"] - ratings["B"] == pytest.approx(400 * math.log10(3), abs=1e-2)
    assert (ratings["A"] + ratings["B"]) / 2 == pytest.approx(1000)  # betas are centred
    for tie in ("tie", "both_bad"):  # 1 win + 1 tie = 1.5 : 0.5, odds 3
        ratings = fit_bradley_terry([vote("A", "B", "left"), vote("B", "A", tie)], prior=1e-6)
        assert ratings["A"] - ratings["B"] == pytest.approx(400 * math.log10(3), abs=1e-2)


def test_leaderboard_counts_and_win_rates():
    votes = ([vote("A", "B", "left")] * 3 + [vote("B", "A", "left"), vote("A", "B", "tie"), vote("C", "A", "both_bad")])
    board = leaderboard(votes, bootstrap=50)
    assert list(board["ratings"]) == ["A", "C", "B"]  # A beat B, and C only drew with A
    assert board["votes"] == 6 and board["ties"] == 2
    assert {m: r["votes"] for m, r in board["ratings"].items()} == {"A": 6, "B": 5, "C": 1}
    assert board["win_rate"]["A"] == {"C": 0.5, "B": 3.5 / 5}
    assert board["win_rate"]["B"] == {"A": 1.5 / 5, "C": None}
    assert board["win_rate"]["C"] == {"A": 0.5, "B": None}
    for row in board["ratings"].values():
        low, high = row["ci95"]
        assert low <= high
    assert leaderboard(votes, bootstrap=50) == board  # seeded: the same intervals every time


def test_never_lost_gets_a_finite_rating():
    ratings = fit_bradley_terry([vote("A", "B", "left")] * 5 + [vote("C", "B", "tie")])
    assert set(ratings) == {"A", "B", "C"}
    assert all(math.isfinite(r) for r in ratings.values())
    assert ratings["A"] > ratings["C"] > ratings["B"]


def test_swapping_sides_gives_identical_ratings():
    votes = simulate({"x": 0.0, "y": 0.7, "z": -0.4}, 300, tie_share=0.5, seed=3)
    flip = {"left": "right", "right": "left", "tie": "tie", "both_bad": "both_bad"}
    swapped = [vote(v["models"][1], v["models"][0], flip[v["winner"]]) for v in votes]
    original, mirrored = fit_bradley_terry(votes), fit_bradley_terry(swapped)
    assert list(original) == list(mirrored)
    assert mirrored == pytest.approx(original, abs=1e-9)


def test_no_votes():
    assert fit_bradley_terry([]) == {}
    with pytest.raises(FatuneError, match="no votes to rank"):
        leaderboard([])


def test_write_leaderboard(tmp_path):
    votes = simulate({"پایه": 0.0, "lora|v2": 1.0, "qlora": 0.5}, 200, tie_share=0.5, seed=4)
    with VoteLog(tmp_path / "votes.jsonl") as log:
        for v in votes:
            log.append(v)
    path = write_leaderboard(tmp_path / "votes.jsonl", tmp_path / "board", bootstrap=30, seed=7)
    assert path == tmp_path / "board" / "leaderboard.json"
    assert json.loads(path.read_text(encoding="utf-8")) == leaderboard(votes, bootstrap=30, seed=7)
    markdown = (tmp_path / "board" / "leaderboard.md").read_text(encoding="utf-8")
    assert "پایه" in markdown and "qlora" in markdown and "lora\\|v2" in markdown  # | escaped in tables
    assert "30 bootstrap" in markdown and "both bad" in markdown
    assert (tmp_path / "board" / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "board").iterdir()) == [
        "leaderboard.json", "leaderboard.md", "leaderboard.png"]  # no temp files left behind


# --- the votes file ---------------------------------------------------------------------------------


def test_make_vote_defaults_and_validates():
    made = make_vote(("A", "B"), "tie", "p", ("a", "b"))
    assert made["models"] == ["A", "B"] and made["answers"] == ["a", "b"]
    assert made["time"].endswith("+00:00") and len(made["time"]) == len(TIME)
    with pytest.raises(FatuneError, match=r"winner must be one of left, right, tie, both_bad \(winner\)"):
        make_vote(["A", "B"], "draw", "p", ["a", "b"])
    with pytest.raises(FatuneError, match=r"two different models \(models\)"):
        make_vote(["A", "A"], "left", "p", ["a", "b"])


def test_round_trip_and_never_truncates(tmp_path):
    path = tmp_path / "deep" / "votes.jsonl"
    first, second = vote("A", "B", "left"), {**vote("B", "C", "both_bad"), "session": "s1"}
    with VoteLog(path) as log:
        log.append(first)
    with VoteLog(path) as log:  # a restarted server reopens the same file
        assert log.path == path
        log.append(second)
    assert read_votes(path) == [first, second]  # extra keys are kept
    assert "سلام" in path.read_text(encoding="utf-8")  # not \u escapes


def test_append_rejects_a_bad_vote(tmp_path):
    with VoteLog(tmp_path / "votes.jsonl") as log, pytest.raises(FatuneError, match=r"\(winner\)"):
        log.append({**vote("A", "B", "left"), "winner": "A"})
    assert (tmp_path / "votes.jsonl").read_bytes() == b""


def test_concurrent_appends_never_interleave(tmp_path):
    path = tmp_path / "votes.jsonl"
    long_answer = "پاسخ " * 3000  # lines of ~30 KB: bigger than any single buffer, so interleaving would show
    with VoteLog(path) as log:
        def worker(thread: int):
            for k in range(20):
                log.append(make_vote([f"m{thread}", "other"], WINNERS[k % 4], f"{thread}-{k}", [long_answer, "b"]))
        threads = [threading.Thread(target=worker, args=(t,)) for t in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    votes = read_votes(path)
    assert len(votes) == 640
    assert sorted(v["prompt"] for v in votes) == sorted(f"{t}-{k}" for t in range(32) for k in range(20))


LINE = json.dumps(vote("A", "B", "left"), ensure_ascii=False)


def with_field(**changes) -> str:
    return json.dumps({**json.loads(LINE), **changes}, ensure_ascii=False)


def without(field: str) -> str:
    return json.dumps({k: v for k, v in json.loads(LINE).items() if k != field})


@pytest.mark.parametrize("bad, message", [
    ("{not json", r"votes.jsonl:2: not valid JSON: .*"),
    ("[1, 2]", r"votes.jsonl:2: expected a JSON object \(a vote\)$"),
    (without("winner"), r"votes.jsonl:2: missing field \(winner\)"),
    (with_field(winner="A"), r"votes.jsonl:2: winner must be one of left, right, tie, both_bad \(winner\)"),
    (with_field(models=["A"]), r"votes.jsonl:2: models must be a list of two model names \(models\)"),
    (with_field(models="A,B"), r"votes.jsonl:2: .* \(models\)"),
    (with_field(models=["A", ""]), r"votes.jsonl:2: a model name must be a non-empty string \(models\[1\]\)"),
    (with_field(models=[3, "B"]), r"votes.jsonl:2: .* \(models\[0\]\)"),
    (with_field(models=["A", "A"]), r"votes.jsonl:2: models must name two different models \(models\)"),
    (with_field(answers=["a"]), r"votes.jsonl:2: answers must be a list of two strings \(answers\)"),
    (with_field(answers=["a", None]), r"votes.jsonl:2: an answer must be a string \(answers\[1\]\)"),
    (with_field(prompt=["p"]), r"votes.jsonl:2: prompt must be a string \(prompt\)"),
    (with_field(time=1764435600), r"votes.jsonl:2: time must be a string \(time\)"),
    (with_field(time="yesterday"), r"votes.jsonl:2: time must be an ISO-8601 .* \(time\)"),
])
def test_read_votes_names_file_line_and_field(tmp_path, monkeypatch, bad, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "votes.jsonl").write_text(f"{LINE}\n{bad}\n\n{LINE}\n", encoding="utf-8")
    with pytest.raises(FatuneError, match=f"^{message}"):
        read_votes("votes.jsonl")


def test_read_votes_missing_file(tmp_path):
    with pytest.raises(FatuneError, match=r"nope.jsonl: no such votes file"):
        read_votes(tmp_path / "nope.jsonl")


def test_torn_last_line_is_skipped_but_torn_middle_line_is_an_error(tmp_path, caplog):
    path = tmp_path / "votes.jsonl"
    torn = LINE.encode("utf-8")[:-9]
    path.write_bytes(f"{LINE}\n{LINE}\n".encode("utf-8") + torn)
    with caplog.at_level(logging.WARNING, logger="fatune"):
        assert len(read_votes(path)) == 2
    assert "votes.jsonl:3:" in caplog.text
    path.write_bytes(f"{LINE}\n".encode("utf-8") + torn + b"\n" + f"{LINE}\n".encode("utf-8"))
    with pytest.raises(FatuneError, match=r"votes.jsonl:2: not valid JSON"):
        read_votes(path)
    path.write_bytes(f"{LINE}\n".encode("utf-8") + "سلام".encode("utf-8")[:-1])  # cut inside a character
    assert len(read_votes(path)) == 1


def test_reopening_after_a_crash_keeps_the_file_readable(tmp_path, monkeypatch, caplog):
    path = tmp_path / "votes.jsonl"
    torn = LINE.encode("utf-8")[:-9]
    path.write_bytes(f"{LINE}\n".encode("utf-8") * 3 + torn)
    monkeypatch.setattr(votes_module._last_line, "__defaults__", (16,))  # read the tail in many small blocks
    with caplog.at_level(logging.WARNING, logger="fatune"), VoteLog(path) as log:
        log.append(vote("C", "D", "right"))
    assert [v["models"] for v in read_votes(path)] == [["A", "B"]] * 3 + [["C", "D"]]
    assert (tmp_path / "votes.jsonl.torn").read_bytes() == torn + b"\n"  # the torn vote is kept aside
    assert "torn" in caplog.text
    path.write_bytes(LINE.encode("utf-8"))  # a complete last line without its newline just gets one
    with VoteLog(path) as log:
        log.append(vote("C", "D", "right"))
    assert len(read_votes(path)) == 2


def test_arena_verb_writes_the_leaderboard_and_bad_votes_exit_2(tmp_path, capsys):
    from fatune.cli import main

    path = tmp_path / "votes.jsonl"
    with VoteLog(path) as log:
        for winner in ("left", "left", "right", "tie"):
            log.append(vote("A", "B", winner))
    assert main(["arena", str(path), "--out", str(tmp_path / "board"), "--bootstrap", "50"]) == 0
    board = json.loads((tmp_path / "board" / "leaderboard.json").read_text())
    assert list(board["ratings"]) == ["A", "B"] and board["votes"] == 4
    assert (tmp_path / "board" / "leaderboard.png").stat().st_size > 0
    path.write_text(LINE + "\n" + LINE.replace('"left"', '"middle"') + "\n")
    assert main(["arena", str(path), "--out", str(tmp_path / "board2")]) == 2
    assert "votes.jsonl:2:" in capsys.readouterr().err
