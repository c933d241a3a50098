"""``fatune.environment``: the versions a run, an evaluation and a benchmark record, and peak memory. The keys
are those ``docs/results`` and earlier runs' ``train_summary.json`` hold, so they must not change."""

from __future__ import annotations

import platform
import resource
from importlib.metadata import version

import pytest
import torch

from fatune import __version__
from fatune.bench.common import environment
from fatune.environment import library_versions, max_rss_bytes, package_version, peak_memory_bytes, versions


def test_run_versions_keys_and_values():
    import peft
    import torch
    import transformers

    found = versions()
    assert list(found)[:5] == ["fatune", "torch", "transformers", "peft", "python"]
    assert set(found) - {"fatune", "torch", "transformers", "peft", "python"} <= {"git_commit"}
    # the installed versions, as the modules report them (what runs recorded before this module existed)
    assert found["fatune"] == __version__ and found["python"] == platform.python_version()
    assert (found["torch"], found["transformers"], found["peft"]) == (torch.__version__, transformers.__version__,
                                                                      peft.__version__)


def test_bench_environment_keeps_its_keys():
    info = environment()
    expected = ["machine", "torch", "transformers", "peft", "trl", "python", "date", "fatune", "torch_threads"]
    assert list(info)[:len(expected)] == expected
    assert set(info) - set(expected) <= {"gpu"}
    assert {k: info[k] for k in ("torch", "transformers", "peft")} == library_versions()


def test_a_missing_package_has_no_version():
    assert package_version("fatune-no-such-distribution") is None
    assert package_version("torch") == version("torch")


def test_peak_memory_is_this_process_rss_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("on a GPU peak_memory_bytes is the CUDA peak allocation, not the RSS")
    rss = max_rss_bytes(resource.getrusage(resource.RUSAGE_SELF))
    assert rss > 50e6  # torch is imported: tens of MB at least, so KiB were scaled to bytes
    assert peak_memory_bytes() >= rss
