"""Write the task-data subsets bundled with fatune (``src/fatune/data/tasks/``) from ``../shared/data``.

A fresh machine has no ``shared/`` folder, yet the demo, the tests and ``fatune eval`` need a little
real Persian task data; these subsets are it, reachable as ``fatune:tasks/REL``. The script is
deterministic (same input files, same bytes out), copies every license file verbatim and writes the
attribution ``README.md``. Run it from the repository root:

    python3 scripts/bundle_task_data.py [--shared ../shared/data] [--out src/fatune/data/tasks]

PQuAD articles 30:100 are left out on purpose: articles 0:30 train and 100:120 are held out, so a model
fine-tuned on ``pquad/train.json`` is never evaluated on a passage it saw.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PQUAD_TRAIN, PQUAD_HELDOUT = slice(0, 30), slice(100, 120)
FARSTAIL_TRAIN_ROWS = 2000

README = """\
# fatune's bundled task data

Small subsets of public Persian task datasets, so that a machine without the full data can train on
and evaluate Persian reading comprehension, topic classification, inference and translation. Use them as
`fatune:tasks/<path>`, e.g. `fatune:tasks/pquad/heldout.json` or
`fatune:tasks/ntrex/eng-US.txt+fatune:tasks/ntrex/fas.txt`. Every folder keeps its dataset's license
file(s) verbatim; the subsets are otherwise unchanged copies (no text was edited).

Made by `python3 scripts/bundle_task_data.py` from the copies in `shared/data/` (deterministic: rerunning
it gives the same bytes).

| folder | dataset | authors | license | subset |
|---|---|---|---|---|
| `pquad/` | [PQuAD](https://github.com/AUT-NLP/PQuAD), Persian reading comprehension on Wikipedia (SQuAD 2.0 JSON) | Kasra Darvishi, Newsha Shahbodaghkhan, Zahra Abbasiantaeb, Saeedeh Momtazi (Amirkabir University of Technology; Mabna Intelligent Computing) | CC BY-SA 4.0 (`LICENSE.md`; `readme_pquad_en.txt` is the dataset's own description) | from the validation split (120 articles): `train.json` = articles 0-29 ({train_q} questions), `heldout.json` = articles 100-119 ({heldout_q} questions); disjoint articles |
| `sib200/` | [SIB-200](https://github.com/dadelani/sib-200), topic classification, Persian (`pes_Arab`) | David Ifeoluwa Adelani et al. | Apache-2.0 (`LICENSE`); the sentences come from FLORES-200 (NLLB Team, Meta AI), CC BY-SA 4.0 | `train.tsv` ({sib_train} rows) and `test.tsv` ({sib_test} rows) whole, `labels.txt` |
| `farstail/` | [FarsTail](https://github.com/dml-qom/FarsTail), Persian natural language inference | Hossein Amirkhani, Mohammad AzariJafari, Soroush Faridan-Jahromi, Zeinab Kouhkan, Zohreh Pourjafari, Azadeh Amirak | Apache-2.0 (`LICENSE`) | `train.tsv`: the header and the first {farstail_train} rows; `test.tsv` whole ({farstail_test} rows) |
| `ntrex/` | [NTREX-128](https://github.com/MicrosoftTranslator/NTREX), news test references (English WMT19 newstest and its human Persian translation) | Christian Federmann, Tom Kocmi, Ying Xin (Microsoft) | CC BY-SA 4.0 (`LICENSE.md`) | `eng-US.txt` and `fas.txt`: the first {ntrex} lines of `newstest2019-ref`, aligned line by line |

Anything derived from the CC BY-SA 4.0 subsets (PQuAD, the FLORES-200 sentences of SIB-200, NTREX)
must carry the same license and this attribution.

Citations: PQuAD: Darvishi et al., *PQuAD: A Persian Question Answering Dataset*, Computer Speech &
Language, 2023. SIB-200: Adelani et al., *SIB-200: A Simple, Inclusive, and Big Evaluation Dataset for
Topic Classification in 200+ Languages and Dialects*, EACL 2024. FarsTail: Amirkhani et al., *FarsTail:
a Persian natural language inference dataset*, Soft Computing, 2023. NTREX-128: Federmann et al.,
*NTREX-128 - News Test References for MT Evaluation of 128 Languages*, SUMEval 2022.
"""


def _pquad(shared: Path, out: Path) -> dict:
    document = json.loads((shared / "pquad" / "validation.json").read_text(encoding="utf-8"))
    counts = {}
    for name, articles in (("train", PQUAD_TRAIN), ("heldout", PQUAD_HELDOUT)):
        subset = {"version": document["version"], "data": document["data"][articles]}
        # json.dumps' default separators, as the original file: one line, UTF-8, no escapes.
        (out / f"{name}.json").write_text(json.dumps(subset, ensure_ascii=False), encoding="utf-8")
        counts[f"{name}_q"] = sum(len(p["qas"]) for a in subset["data"] for p in a["paragraphs"])
    return counts


def _first_rows(source: Path, target: Path, rows: int) -> int:
    """Copy the header and the first ``rows`` TSV records verbatim (a quoted record may span lines)."""
    with open(source, encoding="utf-8", newline="") as handle:
        lines = list(handle)  # physical lines, split at line ends only (not at U+2028 as splitlines would)
    reader = csv.reader(lines, delimiter="\t")
    next(reader)
    copied = 0
    for copied, _ in enumerate(reader, 1):
        if copied == rows:
            break
    with open(target, "w", encoding="utf-8", newline="") as handle:
        handle.write("".join(lines[:reader.line_num]))
    return copied


def _records(path: Path) -> int:
    with open(path, encoding="utf-8", newline="") as handle:
        return sum(1 for _ in csv.reader(handle, delimiter="\t")) - 1


def bundle(shared: Path, out: Path) -> dict:
    """Rewrite ``out`` from ``shared``; return the counts written into the README."""
    if out.exists():
        shutil.rmtree(out)
    folders = {"pquad": ["LICENSE.md", "readme_pquad_en.txt"], "sib200": ["LICENSE", "train.tsv", "test.tsv",
               "labels.txt"], "farstail": ["LICENSE", "test.tsv"], "ntrex": ["LICENSE.md", "eng-US.txt", "fas.txt"]}
    for folder, files in folders.items():
        (out / folder).mkdir(parents=True)
        for name in files:
            shutil.copyfile(shared / folder / name, out / folder / name)
    counts = _pquad(shared, out / "pquad")
    counts["farstail_train"] = _first_rows(shared / "farstail" / "train.tsv", out / "farstail" / "train.tsv",
                                           FARSTAIL_TRAIN_ROWS)
    counts["farstail_test"] = _records(out / "farstail" / "test.tsv")
    counts["sib_train"], counts["sib_test"] = (_records(out / "sib200" / f"{s}.tsv") for s in ("train", "test"))
    counts["ntrex"] = len((out / "ntrex" / "fas.txt").read_text(encoding="utf-8").splitlines())
    (out / "README.md").write_text(README.format(**counts), encoding="utf-8")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "src" / "fatune" / "data" / "tasks")
    args = parser.parse_args()
    counts = bundle(args.shared, args.out)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({size / 1e6:.2f} MB): {counts}")


if __name__ == "__main__":
    main()
