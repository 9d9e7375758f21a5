"""``python -m igsm generate | verify | stats | show | report | record | export`` (docs/dataset.md).

Errors a user can cause (bad flags, unreadable files, bad world files, malformed lines) end the
program with exit code 2 and one line on stderr, never a traceback.

Unix conventions: ``--out`` of ``generate`` defaults to standard output and ``-`` means standard
output everywhere; ``--in -`` reads standard input; status lines go to standard error, so data
pipes cleanly (``python -m igsm generate --n 5 | jq .answer``); a closed pipe (``| head``) ends
the program quietly with exit code 0.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import statistics
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Optional

from .generator import GenerationError, generate_problem, problem_rng
from .generator_config import GENERATOR_PRESETS, OP_SAMPLING, ConfigError, GeneratorConfig, generator_preset
from .problem import Problem
from .retry import RETRY_KINDS, RETRY_WEAK_FROM
from .world import WorldError, load_world


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


# ----------------------------------------------------------------------------------------------
# generate
# ----------------------------------------------------------------------------------------------
def problem_record(p: Problem, index: int, split: str) -> dict:
    """One exported JSONL object (fields documented in docs/dataset.md)."""
    return {
        "id": index,
        "problem": p.problem_text,
        "solution": p.solution,
        "answer": p.answer,
        "op": p.op,
        "ip": p.ip,
        "format": p.fmt,
        "split": split,
        "reask": p.reask,
        "template_hash": p.template_hash,
        "bucket": p.bucket(),
        "graph": p.graph_json(),
    }


def _generate_chunk(args: tuple) -> list[str]:
    cfg, seed, split, start, stop = args
    out = []
    for i in range(start, stop):
        p = generate_problem(cfg, problem_rng(seed, split, i))
        out.append(json.dumps(problem_record(p, i, split), ensure_ascii=False))
    return out


def cmd_generate(a: argparse.Namespace) -> int:
    overrides = {"split": a.split, "reask": a.reask}
    if a.format is not None:
        overrides["fmt"] = a.format
    if a.op is not None:
        overrides["op"] = a.op
    if a.op_sampling is not None:
        overrides["op_sampling"] = a.op_sampling
    if a.world is not None:
        overrides["world"] = a.world
    if a.retry_rate:
        overrides["retry_rate"], overrides["retry_kind"] = a.retry_rate, a.retry_kind
        if a.retry_weak_from is not None:
            overrides["retry_weak_from"] = a.retry_weak_from
    cfg = generator_preset(a.preset, **overrides)
    if a.world is not None:
        load_world(a.world)  # fail early with the file's own message
    if a.n < 0:
        raise CLIError(f"--n {a.n}: must be >= 0")
    chunk = 500
    jobs = [(cfg, a.seed, a.split, s, min(a.n, s + chunk)) for s in range(0, a.n, chunk)]
    with (ParquetRecordWriter(a.out) if is_parquet(a.out) else _open_out(a.out)) as f:
        if a.workers > 1 and len(jobs) > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(a.workers) as pool:
                for lines in pool.imap(_generate_chunk, jobs):
                    f.write("\n".join(lines) + "\n")
        else:
            for job in jobs:
                lines = _generate_chunk(job)
                f.write("\n".join(lines) + "\n")
    op = a.op or ("train distribution" if cfg.op_sampling == "min2" else f"{cfg.op_sampling} on 1..{cfg.max_op}")
    status(f"wrote {a.n} {a.preset} problems (split={a.split}, op={op}, "
           f"format={cfg.fmt}, reask={a.reask}, seed={a.seed}"
           + (f", retry_rate={cfg.retry_rate}, retry_kind={cfg.retry_kind}" if cfg.retry_rate else "")
           + (f", retry_weak_from={cfg.retry_weak_from}" if cfg.retry_rate and cfg.retry_kind == "retry_weak" else "")
           + f") to {_where(a.out)}")
    return 0


def status(line: str) -> None:
    """A status line: standard error, so standard output carries data only."""
    print(line, file=sys.stderr)


def _where(path: str) -> str:
    return "standard output" if path == "-" else path


def _where_in(path: str) -> str:
    return "standard input" if path == "-" else path


class _StandardOutput:
    """Standard output as a file to write and close: closing flushes it but leaves it open."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def close(self) -> None:
        sys.stdout.flush()

    def __enter__(self) -> _StandardOutput:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open_out(path: str):
    """A text file to write, or standard output for ``-``."""
    if path == "-":
        return _StandardOutput()
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as e:
        raise CLIError(f"--out {path}: cannot be written ({e.strerror or e})") from None


# ----------------------------------------------------------------------------------------------
# Parquet (chosen by the file suffix; needs pyarrow, from the optional extra [hf])
# ----------------------------------------------------------------------------------------------
def is_parquet(path: str) -> bool:
    return str(path).lower().endswith(".parquet")


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401  (the submodule is not imported by pyarrow itself)
    except ImportError:
        raise CLIError('Parquet files need the package pyarrow of the optional extra [hf]: '
                       'pip install -e ".[hf]" (or write .jsonl)') from None
    return pyarrow


# Column types of the exported records (the rest are inferred). template_hash is a 64-bit
# unsigned hash; graph is the same object as in JSONL, stored as a JSON string (docs/interop.md).
PARQUET_TYPES = {"id": "int64", "problem": "string", "solution": "string", "answer": "int64", "op": "int64",
                 "ip": "int64", "format": "string", "split": "string", "reask": "bool",
                 "template_hash": "uint64", "bucket": "int64", "graph": "string"}


class ParquetRecordWriter:
    """Writes the JSONL lines of ``generate`` as Parquet rows: the same records, one row group per
    ``write`` call; nested values (``graph``) become JSON strings."""

    def __init__(self, path: str):
        self.pa = _pyarrow()
        self.path = path
        self.writer = None
        self.schema = None
        try:
            open(path, "wb").close()  # fail now, with the usual message, if it cannot be written
        except OSError as e:
            raise CLIError(f"--out {path}: cannot be written ({e.strerror or e})") from None

    def write(self, text: str) -> None:
        records = [json.loads(line) for line in text.splitlines() if line]
        for r in records:
            for k, v in r.items():
                if isinstance(v, (dict, list)):
                    r[k] = json.dumps(v, ensure_ascii=False)
        if self.schema is None:
            pa = self.pa
            self.schema = pa.schema([
                (k, pa.type_for_alias(PARQUET_TYPES[k]) if k in PARQUET_TYPES
                 else pa.array([r.get(k) for r in records]).type)
                for k in records[0]])
            self.writer = self.pa.parquet.ParquetWriter(self.path, self.schema)
        self.writer.write_table(self.pa.Table.from_pylist(records, schema=self.schema))

    def __enter__(self) -> ParquetRecordWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self.writer is None:  # no rows: still a valid file, with the known columns
            schema = self.pa.schema([(k, self.pa.type_for_alias(t)) for k, t in PARQUET_TYPES.items()])
            self.writer = self.pa.parquet.ParquetWriter(self.path, schema)
        self.writer.close()


def read_parquet(path: str) -> Iterator[tuple[int, dict]]:
    """(row number from 1, object) per row; JSON strings in ``graph`` become objects again."""
    pa = _pyarrow()
    try:
        f = pa.parquet.ParquetFile(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise CLIError(f"--in {path}: cannot be read as Parquet ({e})") from None
    n = 0
    for batch in f.iter_batches(batch_size=1024):
        for obj in batch.to_pylist():
            n += 1
            if isinstance(obj.get("graph"), str):
                try:
                    obj["graph"] = json.loads(obj["graph"])
                except json.JSONDecodeError as e:
                    raise CLIError(f"{path} row {n}: column 'graph' is not valid JSON ({e.msg})") from None
            yield n, obj


def read_records(path: str) -> Iterator[tuple[int, dict]]:
    """The records of a JSONL or (by suffix) Parquet file, as (line or row number, object)."""
    return read_parquet(path) if is_parquet(path) else read_jsonl(path)


def read_jsonl(path: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-empty line of a file or, for ``-``, of standard input;
    malformed lines are a CLIError."""
    if path == "-":
        f = contextlib.nullcontext(sys.stdin)
        path = "standard input"
    else:
        try:
            f = open(path, encoding="utf-8")
        except OSError as e:
            raise CLIError(f"--in {path}: cannot be read ({e.strerror or e})") from None
    with f as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise CLIError(f"{path} line {n}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise CLIError(f"{path} line {n}: expected a JSON object, got {type(obj).__name__}")
            yield n, obj


# ----------------------------------------------------------------------------------------------
# verify
# ----------------------------------------------------------------------------------------------
def cmd_verify(a: argparse.Namespace) -> int:
    from .parse import verify_text
    from .verify import Tally, verify_solution

    world = load_world(a.world)
    counts = Tally()
    out = _open_out(a.out) if a.out else None
    try:
        for n, obj in read_records(a.inp):
            for key in ("problem", "solution"):
                if not isinstance(obj.get(key), str):
                    raise CLIError(f"{_where_in(a.inp)} line {n}: field {key!r} must be a string, "
                                   f"got {type(obj.get(key)).__name__}")
            answer = obj.get("answer")
            if isinstance(obj.get("graph"), dict):
                try:
                    problem = Problem.from_graph_json(obj["graph"])
                except (KeyError, TypeError, ValueError) as e:
                    raise CLIError(f"{_where_in(a.inp)} line {n}: field 'graph' is malformed ({e!r})") from None
                report = verify_solution(problem, obj["solution"], answer)
            else:
                report = verify_text(obj["problem"], obj["solution"], answer, world)
            counts.add(report)
            if out:
                rec = {"id": obj.get("id", n), **_report_fields(report)}
                out.write(json.dumps(rec, ensure_ascii=False) + "\n")
    finally:
        if out:
            out.close()
    summary = f"{counts.n} verified: {counts.correct} correct, {counts.n - counts.correct} wrong"
    if counts.retractions:  # retry data (igsm.retry)
        summary += (f"; {counts.retractions} retractions in {counts.with_retractions} solutions "
                    f"({counts.true_regrets} not computable yet, {counts.false_regrets} ready)")
    # The summary is the result, unless the per-line report already fills standard output.
    print(summary, file=sys.stderr if a.out == "-" else sys.stdout)
    return 0


def _report_fields(report) -> dict:
    d = report.to_dict()
    keys = ("correct", "answer_correct", "error", "first_wrong_param", "first_wrong_sentence",
            "missing_params", "unnecessary_params", "message", "retractions", "true_regrets", "false_regrets")
    return {k: d.get(k) for k in keys}


# ----------------------------------------------------------------------------------------------
# stats
# ----------------------------------------------------------------------------------------------
def histogram(name: str, values: Iterable[int], width: int = 40) -> str:
    vals = list(values)
    if not vals:
        return f"{name}: no values"
    counts = collections.Counter(vals)
    top = max(counts.values())
    lines = [f"{name}: n={len(vals)} min={min(vals)} median={statistics.median(vals):g} "
             f"mean={statistics.mean(vals):.2f} max={max(vals)}"]
    keys = sorted(counts)
    if len(keys) > 30:  # bin long tails (token lengths) into ~25 equal bins
        lo, hi = keys[0], keys[-1]
        step = max(1, (hi - lo + 24) // 25)
        binned = collections.Counter((v - lo) // step for v in vals)
        top = max(binned.values())
        for b in range(0, (hi - lo) // step + 1):
            c = binned.get(b, 0)
            lines.append(f"  {lo + b * step:>5}-{lo + (b + 1) * step - 1:<5} {c:>7} {'#' * round(width * c / top)}")
    else:
        for k in keys:
            c = counts[k]
            lines.append(f"  {k:>11} {c:>7} {'#' * round(width * c / top)}")
    return "\n".join(lines)


def cmd_stats(a: argparse.Namespace) -> int:
    from .tokenizer import build_tokenizer

    tok = build_tokenizer("gpt2")
    ops, ips, sentences, lengths, answers, retractions = [], [], [], [], [], []
    templates: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)  # op -> hash -> count
    buckets: dict[int, int] = {}  # template hash -> bucket
    for n, obj in read_records(a.inp):
        problem, solution = obj.get("problem"), obj.get("solution")
        if not isinstance(problem, str) or not isinstance(solution, str):
            raise CLIError(f"{_where_in(a.inp)} line {n}: fields 'problem' and 'solution' must be strings")
        statements = problem.count(". ") + problem.endswith(".")  # sentences end with "."
        ips.append(int(obj["ip"]) if isinstance(obj.get("ip"), int) else statements)
        n_back = solution.count(" as BACK.")  # retry data's retractions are not solution steps
        retractions.append(n_back)
        sol_sentences = solution.count("Define ") - n_back
        sentences.append(sol_sentences)
        ops.append(int(obj["op"]) if isinstance(obj.get("op"), int) else solution.count("="))
        if isinstance(obj.get("template_hash"), int) and isinstance(obj.get("bucket"), int):
            templates[ops[-1]][obj["template_hash"]] += 1
            buckets[obj["template_hash"]] = obj["bucket"]
        answer = obj.get("answer", "")
        lengths.append(len(tok.encode_example(problem, solution, answer)))
        try:
            answers.append(int(str(answer).strip().rstrip(".")))
        except ValueError:
            pass
    print(histogram("op", ops))
    print(histogram("ip (statement sentences)", ips))
    print(histogram("solution sentences", sentences))
    if any(retractions):
        print(histogram("retractions (Define A as BACK.)", retractions))
    print(histogram("GPT-2 tokens (full sequence)", lengths))
    print(histogram("answer", answers))
    if templates:
        print(template_table(templates, buckets))
    return 0


def template_table(templates: dict[int, collections.Counter], buckets: dict[int, int],
                   boundary: int = GeneratorConfig.split_boundary) -> str:
    """Distinct solution templates per op and how many fall in the test buckets
    (docs/spec.md#10-the-template-hash-and-the-split). At small op there are few (2 at op = 1, 7
    at op = 2), so a test template there is a whole solution form that training never shows at that
    op, not one more random variation."""
    lines = [f"solution templates per op (test: bucket >= {boundary}; generated with "
             f"--split any to see both):", f"  {'op':>4} {'problems':>9} {'templates':>10} {'test templates':>15} "
             f"{'test problems':>14}"]
    for op in sorted(templates):
        counts = templates[op]
        test = [h for h in counts if buckets[h] >= boundary]
        test_share = sum(counts[h] for h in test) / sum(counts.values())
        lines.append(f"  {op:>4} {sum(counts.values()):>9} {len(counts):>10} {len(test):>15} "
                     f"{100 * test_share:>13.1f}%")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------
def cmd_report(a: argparse.Namespace) -> int:
    from .report import ReportError, write_report

    try:
        result = write_report(a.run_dirs, a.out)
    except ReportError as e:
        raise CLIError(str(e)) from None
    for line in result["skipped"]:
        print(line, file=sys.stderr)
    if not result["runs"]:
        raise CLIError(f"no run could be read from {' '.join(a.run_dirs)} (see the lines above)")
    print(f"wrote {result['report']} and {len(result['figures'])} figures for {len(result['runs'])} runs")
    return 0


# record (igsm.record)
# ----------------------------------------------------------------------------------------------
def cmd_record(a: argparse.Namespace) -> int:
    from .record import RECORD_MAX_BYTES, RecordError, make_record

    try:
        record = make_record(a.run_dir, a.dest, force=a.force, commit=a.commit)
    except RecordError as e:
        raise CLIError(str(e)) from None
    size = sum(f.stat().st_size for f in Path(a.dest).iterdir() if f.is_file())
    state = "finished" if record["finished"] else "not finished"
    wall = "?" if record["wall_s"] is None else f"{record['wall_s'] / 60:.1f} min"
    print(f"recorded {a.run_dir} ({record['kind']} run, step {record['step']}, {state}, {wall}) to {a.dest}: "
          f"{', '.join(record['files'] + ['record.json'])}; {size / 1000:.0f} KB")
    if size > RECORD_MAX_BYTES:
        status(f"warning: {a.dest} is {size:,} bytes, more than the {RECORD_MAX_BYTES:,} a committed record may "
               "hold (tests/test_record.py)")
    if record["git_commit"] is None:
        status("warning: the run folder names no git commit (pass --commit SHA)")
    return 0


# show
# ----------------------------------------------------------------------------------------------
FIGURE_SUFFIXES = (".png", ".svg", ".pdf")


def cmd_show(a: argparse.Namespace) -> int:
    from .show import describe, draw_problem, save_figure

    if a.out is not None and a.out != "-" and not a.out.lower().endswith(FIGURE_SUFFIXES):
        raise CLIError(f"--out {a.out}: the figure's format follows the suffix, one of {', '.join(FIGURE_SUFFIXES)} "
                       "(or - for PNG on standard output)")
    shown = shown_problem(a)
    if a.out is None:
        print(describe(shown))
        return 0
    fig = draw_problem(shown)
    if a.out == "-":
        save_figure(fig, sys.stdout.buffer)
        sys.stdout.buffer.flush()
    else:
        try:
            save_figure(fig, a.out)
        except OSError as e:
            raise CLIError(f"--out {a.out}: cannot be written ({e.strerror or e})") from None
    status(f"wrote the figure of {shown.title.split(':')[0]} to {_where(a.out)}")
    return 0


def shown_problem(a: argparse.Namespace):
    """The problem ``show`` draws: record ``--index`` of ``--in``, or problem ``--index`` of the
    stream ``generate`` writes with the same preset, split, op, format and seed."""
    from .show import ShownProblem

    if a.index < 0:
        raise CLIError(f"--index {a.index}: must be >= 0")
    if a.inp is None:
        overrides = {"split": a.split}
        for key, value in (("op", a.op), ("fmt", a.format), ("world", a.world)):
            if value is not None:
                overrides[key] = value
        cfg = generator_preset(a.preset or "med", **overrides)
        seed = 0 if a.seed is None else a.seed
        p = generate_problem(cfg, problem_rng(seed, a.split, a.index))
        title = (f"iGSM-{a.preset or 'med'} problem {a.index} of seed {seed} ({a.split} split): "
                 f"op = {p.op}, ip = {p.ip}, format {p.fmt}, answer {p.answer}")
        return ShownProblem(p, p.problem_text, p.solution, p.answer, title)
    for flag, value in (("--preset", a.preset), ("--seed", a.seed), ("--op", a.op), ("--format", a.format)):
        if value is not None:
            raise CLIError(f"{flag} {value}: chooses a generated problem; with --in, choose a record with --index")
    records = 0
    for n, obj in read_jsonl(a.inp):
        if records == a.index:
            return _shown_record(a, n, obj)
        records += 1
    raise CLIError(f"--index {a.index}: {_where_in(a.inp)} has only {records} records")


def _shown_record(a: argparse.Namespace, n: int, obj: dict):
    from .parse import ParseError, parse_problem
    from .show import ShownProblem

    for key in ("problem", "solution"):
        if not isinstance(obj.get(key), str):
            raise CLIError(f"{_where_in(a.inp)} line {n}: field {key!r} must be a string, "
                           f"got {type(obj.get(key)).__name__}")
    if isinstance(obj.get("graph"), dict):
        try:
            p = Problem.from_graph_json(obj["graph"])
        except (KeyError, TypeError, ValueError) as e:
            raise CLIError(f"{_where_in(a.inp)} line {n}: field 'graph' is malformed ({e!r})") from None
    else:  # reference iGSM files carry text only: rebuild the graphs from it
        try:
            p = parse_problem(obj["problem"], load_world(a.world))
        except ParseError as e:
            raise CLIError(f"{_where_in(a.inp)} line {n}: the problem text is not understood ({e})") from None
    answer = obj.get("answer", p.answer)
    title = f"{_where_in(a.inp)}, record {a.index} (line {n}): op = {p.op}, ip = {p.ip}, answer {answer}"
    return ShownProblem(p, obj["problem"], obj["solution"], answer, title)


def add_show_parser(sub) -> None:
    w = sub.add_parser("show", help="one problem as a figure (structure graph, dependency graph, text) or as text",
                       description="Draw one problem as the paper does: the structure graph, the dependency graph "
                                   "(necessary parameters highlighted, the question marked), the problem text and "
                                   "its solution. Without --out, print them as text.")
    w.add_argument("--preset", choices=sorted(GENERATOR_PRESETS), default=None, help="default: med")
    w.add_argument("--split", choices=["train", "test"], default="train")
    w.add_argument("--seed", type=int, default=None, help="default: 0 (the stream of generate --seed S)")
    w.add_argument("--op", type=int, default=None, help="force op = N (default: training distribution)")
    w.add_argument("--format", choices=["pq", "qp"], default=None, help="default: the preset's (pq)")
    w.add_argument("--world", default=None, help="world JSON file (default: the shipped world)")
    w.add_argument("--in", dest="inp", metavar="FILE", default=None,
                   help="show a record of this JSONL file (-: standard input)")
    w.add_argument("--index", type=int, default=0,
                   help="which record of --in, or which problem of the stream (0-based)")
    w.add_argument("--out", default=None, help="figure file: .png, .svg or .pdf (-: PNG on standard output); "
                                               "default: print text")
    w.set_defaults(func=cmd_show)


# export (Hugging Face transformers; igsm.hf)
# ----------------------------------------------------------------------------------------------
def cmd_export(a: argparse.Namespace) -> int:
    try:
        from . import hf

        hf.require("transformers", "python -m igsm export")
        hf.require("safetensors", "python -m igsm export")
        hf.require("tokenizers", "python -m igsm export")
    except ImportError as e:
        raise CLIError(str(e)) from None
    import transformers

    transformers.utils.logging.disable_progress_bar()
    try:
        out = hf.export_checkpoint(a.ckpt, a.out)
    except hf.InteropError as e:
        raise CLIError(str(e)) from None
    own_code = json.loads((out / "config.json").read_text()).get("model_type") == hf.IGSM_MODEL_TYPE  # Canon
    remote = ", trust_remote_code=True" if own_code else ""
    print(f"wrote {out} (load it with transformers.AutoModelForCausalLM.from_pretrained({str(out)!r}{remote}, "
          "local_files_only=True))")
    return 0


# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m igsm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="export problems as JSONL")
    g.add_argument("--preset", choices=sorted(GENERATOR_PRESETS), default="med")
    g.add_argument("--split", choices=["train", "test", "any"], default="train",
                   help="template split (docs/spec.md#10-the-template-hash-and-the-split): train or test "
                        "buckets, or any (both; stats then counts templates per split)")
    g.add_argument("--op", type=int, default=None, help="force op = N (default: training distribution)")
    g.add_argument("--op-sampling", choices=list(OP_SAMPLING), default=None,
                   help="training distribution of op: min2 (the paper's min of two uniform draws; default) "
                        "or uniform on 1..max_op")
    g.add_argument("--reask", action="store_true", help="re-draw the question (docs/spec.md#9-reask)")
    g.add_argument("--format", choices=["pq", "qp"], default=None, help="default: the preset's (pq)")
    g.add_argument("--n", type=int, default=1000)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--world", default=None, help="world JSON file (default: the shipped world)")
    g.add_argument("--workers", type=int, default=1, help="processes (output is the same for any number)")
    g.add_argument("--retry-rate", type=float, default=0.0,
                   help="retry data (Part 2.2): before each solution sentence, with this probability (again and "
                        "again), insert a wrong step 'Define A as BACK.' (default 0: off)")
    g.add_argument("--retry-kind", choices=list(RETRY_KINDS), default=GeneratorConfig.retry_kind,
                   help="retry: A is any parameter of the structure not computable yet; retry_weak: A is one the "
                        "solution still has to define")
    g.add_argument("--retry-weak-from", choices=list(RETRY_WEAK_FROM), default=None,
                   help="retry_weak only: 'next' (default, as Part 2.2) may retract the very next step too; "
                        "'later': only the steps after it")
    g.add_argument("--out", default="-",
                   help="JSONL file (default, or -: standard output), or FILE.parquet (extra [hf])")
    g.set_defaults(func=cmd_generate)
    v = sub.add_parser("verify", help="grade solutions in a JSONL (or .parquet) file")
    v.add_argument("--in", dest="inp", metavar="FILE", required=True, help="JSONL or .parquet file (-: standard input)")
    v.add_argument("--world", default=None)
    v.add_argument("--out", default=None, help="per-line report (JSONL; -: standard output)")
    v.set_defaults(func=cmd_verify)
    s = sub.add_parser("stats", help="histograms of op, ip, sentences, token lengths, answers")
    s.add_argument("--in", dest="inp", metavar="FILE", required=True, help="JSONL file (-: standard input)")
    s.set_defaults(func=cmd_stats)
    r = sub.add_parser("report", help="report.md and PNG figures from training and probe run folders")
    r.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders, or folders holding runs (logs/)")
    r.add_argument("--out", default="report", help="output folder (default: report/)")
    r.set_defaults(func=cmd_report)
    rec = sub.add_parser("record", help="copy a run folder's numbers (no checkpoints) to records/<study>/<run>",
                         description="Copy from a train.py or probe.py run folder what `report` needs to redraw "
                                     "its tables and curves (config, evaluations, training loss, probe.json, CPU, "
                                     "wall time), without checkpoints or TensorBoard events (docs/report.md).")
    rec.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, e.g. logs/tiny/version_0")
    rec.add_argument("dest", metavar="DEST", help="the record folder, e.g. records/<study>/<run>")
    rec.add_argument("--force", action="store_true", help="replace DEST if it exists and is not empty")
    rec.add_argument("--commit", default=None,
                     help="git commit of the run's code, kept where the run folder names none")
    rec.set_defaults(func=cmd_record)
    add_show_parser(sub)
    e = sub.add_parser("export", help="write a train.py checkpoint as a Hugging Face transformers folder")
    e.add_argument("ckpt", metavar="CKPT", help="a train.py checkpoint, e.g. logs/tiny/version_0/checkpoints/last.ckpt")
    e.add_argument("--out", required=True, help="the folder to write (created if missing)")
    e.set_defaults(func=cmd_export)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)  # argparse errors exit 2 with one usage line and one error line
    try:
        return a.func(a)
    except (CLIError, ConfigError, WorldError, GenerationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, like other Unix tools
        _silence_stdout()
        return 0


def _silence_stdout() -> None:
    """Point standard output at /dev/null so the interpreter's final flush into the closed pipe
    cannot print "Exception ignored ... BrokenPipeError" (Python docs, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (e.g. captured): nothing to flush
        pass


if __name__ == "__main__":
    sys.exit(main())
