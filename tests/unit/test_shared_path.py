"""``conftest.shared_path``: tests that need ``../shared`` skip on a fresh clone, with a reason that names the
missing folder, and fail where ``FATUNE_REQUIRE_SHARED=1`` (CI, which has ``../shared``) says they must run."""

import pytest
from conftest import REQUIRE_SHARED, shared_path


def test_a_missing_shared_file_skips_and_names_the_folder(monkeypatch):
    monkeypatch.delenv(REQUIRE_SHARED, raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"needs \.\./shared/no/such\.tsv \(the developers' shared folder"):
        shared_path("no/such.tsv")


def test_a_missing_shared_file_fails_where_it_is_required(monkeypatch):
    monkeypatch.setenv(REQUIRE_SHARED, "1")
    with pytest.raises(pytest.fail.Exception, match=r"needs \.\./shared/no/such\.tsv .*FATUNE_REQUIRE_SHARED=1"):
        shared_path("no/such.tsv")


def test_a_present_shared_file_is_returned(monkeypatch, tmp_path):
    monkeypatch.setattr("conftest.SHARED", tmp_path)
    (tmp_path / "seed").mkdir()
    (tmp_path / "seed" / "prompts.jsonl").write_text("{}\n")
    assert shared_path("seed/prompts.jsonl") == tmp_path / "seed" / "prompts.jsonl"
