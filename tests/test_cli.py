"""python -m igsm: generate -> verify -> stats, and one-line errors (no tracebacks)."""

import json
import subprocess
import sys

import pytest


def run(args, env, **kw):
    return subprocess.run([sys.executable, "-m", "igsm", *args], capture_output=True, text=True, env=env, **kw)


def test_generate_verify_stats(tmp_path, subprocess_env):
    out = tmp_path / "p.jsonl"
    r = run(["generate", "--preset", "med", "--n", "30", "--seed", "3", "--out", str(out)], subprocess_env)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 30
    for key in ("id", "problem", "solution", "answer", "op", "ip", "format", "split", "template_hash", "graph"):
        assert key in rows[0]
    assert isinstance(rows[0]["answer"], int) and rows[0]["split"] == "train"
    r = run(["verify", "--in", str(out), "--out", str(tmp_path / "r.jsonl")], subprocess_env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "30 verified: 30 correct, 0 wrong"
    # text-only: drop the graph and break one solution
    rows[0].pop("graph")
    rows[1].pop("graph")
    rows[1]["solution"] = rows[1]["solution"].replace("Define", "Defin", 1)
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(x) for x in rows[:2]))
    r = run(["verify", "--in", str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "r2.jsonl")], subprocess_env)
    assert r.stdout.strip() == "2 verified: 1 correct, 1 wrong"
    report = [json.loads(x) for x in (tmp_path / "r2.jsonl").read_text().splitlines()]
    assert report[0]["correct"] and not report[1]["correct"] and report[1]["error"]
    r = run(["stats", "--in", str(out)], subprocess_env)
    assert r.returncode == 0 and "op: n=30" in r.stdout and "GPT-2 tokens" in r.stdout


def test_generate_is_deterministic_across_worker_counts(tmp_path, subprocess_env):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    run(["generate", "--preset", "tiny", "--n", "1200", "--out", str(a)], subprocess_env, check=True)
    run(["generate", "--preset", "tiny", "--n", "1200", "--workers", "2", "--out", str(b)], subprocess_env, check=True)
    assert a.read_text() == b.read_text()


def test_generate_op_sampling_uniform_draws_more_hard_problems(subprocess_env):
    """--op-sampling uniform: op = max_op is 1 in max_op (tiny: 4), not 1 in max_op^2 (16);
    the default stays the stream it always was (min2)."""
    r = run(["generate", "--preset", "tiny", "--n", "400", "--op-sampling", "uniform"], subprocess_env)
    assert r.returncode == 0, r.stderr
    ops = [json.loads(line)["op"] for line in r.stdout.splitlines()]
    assert ops.count(4) > 60 and "uniform on 1..4" in r.stderr
    default = run(["generate", "--preset", "tiny", "--n", "400"], subprocess_env)
    explicit = run(["generate", "--preset", "tiny", "--n", "400", "--op-sampling", "min2"], subprocess_env)
    ops = [json.loads(x)["op"] for x in default.stdout.splitlines()]
    assert default.stdout == explicit.stdout and ops.count(4) < 50


@pytest.mark.parametrize("args,fragment", [
    (["generate", "--preset", "med", "--op", "0", "--out", "{tmp}/x.jsonl"], "op=0"),
    (["generate", "--preset", "med", "--world", "{tmp}/none.json", "--out", "{tmp}/x.jsonl"], "none.json"),
    (["generate", "--preset", "med", "--out", "/nonexistent-dir/x.jsonl"], "--out"),
    (["generate", "--preset", "tiny", "--op", "1", "--split", "test", "--n", "1", "--out", "{tmp}/x.jsonl"], "op=1"),
    (["verify", "--in", "{tmp}/missing.jsonl"], "missing.jsonl"),
    (["verify", "--in", "{tmp}/garbage.jsonl"], "line 2"),
    (["verify", "--in", "{tmp}/nofield.jsonl"], "'solution'"),
    (["stats", "--in", "{tmp}/garbage.jsonl"], "line 2"),
    (["generate", "--preset", "huge", "--out", "{tmp}/x.jsonl"], "huge"),
])
def test_errors_are_one_clear_line(tmp_path, subprocess_env, args, fragment):
    (tmp_path / "garbage.jsonl").write_text('{"problem": "a", "solution": "b"}\n{oops\n')
    (tmp_path / "nofield.jsonl").write_text('{"problem": "a"}\n')
    r = run([a.format(tmp=tmp_path) for a in args], subprocess_env)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert fragment in r.stderr.strip().splitlines()[-1]


def test_stats_counts_solution_templates_per_op_and_split(tmp_path, capsys):
    """With both splits generated, stats names how many distinct solution templates each op has and
    how many are test templates: op = 1 has two, both training ones
    (docs/spec.md#10-the-template-hash-and-the-split), and every template of op >= 2 lands in exactly one split."""
    from igsm.cli import main
    out = tmp_path / "any.jsonl"
    assert main(["generate", "--preset", "tiny", "--split", "any", "--n", "400", "--out", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["bucket"] >= 17 for r in records} == {True, False}  # both splits present
    capsys.readouterr()
    assert main(["stats", "--in", str(out)]) == 0
    table = capsys.readouterr().out.split("solution templates per op")[1].splitlines()[2:]
    rows = {int(cols[0]): cols[1:] for cols in (line.split() for line in table)}
    by_op: dict[int, set] = {}
    for r in records:
        by_op.setdefault(r["op"], set()).add(r["template_hash"])
    for op, (problems, n_templates, n_test, _share) in rows.items():
        assert int(problems) == sum(r["op"] == op for r in records)
        assert int(n_templates) == len(by_op[op])
        assert int(n_test) == len({r["template_hash"] for r in records if r["op"] == op and r["bucket"] >= 17})
    assert rows[1][1] == "2" and rows[1][2] == "0"
