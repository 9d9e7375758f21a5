"""python -m igsm follows Unix conventions: data on stdout, status on stderr, `-` for stdin/stdout,
and a closed pipe (`| head`) ends quietly."""

import json
import subprocess
import sys


def run(args, env, stdin=None):
    return subprocess.run([sys.executable, "-m", "igsm", *args], input=stdin, capture_output=True, env=env,
                          timeout=120)


def test_generate_writes_to_stdout_by_default_and_status_to_stderr(subprocess_env):
    default = run(["generate", "--preset", "tiny", "--n", "3", "--seed", "4"], subprocess_env)
    dash = run(["generate", "--preset", "tiny", "--n", "3", "--seed", "4", "--out", "-"], subprocess_env)
    assert default.returncode == dash.returncode == 0
    assert default.stdout == dash.stdout
    rows = [json.loads(line) for line in default.stdout.decode().splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2]
    assert default.stderr.decode().startswith("wrote 3 tiny problems") and "standard output" in default.stderr.decode()


def test_verify_and_stats_read_stdin(subprocess_env):
    data = run(["generate", "--preset", "tiny", "--n", "5"], subprocess_env).stdout
    r = run(["verify", "--in", "-"], subprocess_env, stdin=data)
    assert r.returncode == 0 and r.stdout.decode().strip() == "5 verified: 5 correct, 0 wrong"
    # the per-line report on stdout: the summary moves to stderr, stdout stays pure JSONL
    r = run(["verify", "--in", "-", "--out", "-"], subprocess_env, stdin=data)
    assert r.returncode == 0 and r.stderr.decode().strip() == "5 verified: 5 correct, 0 wrong"
    assert [json.loads(line)["correct"] for line in r.stdout.decode().splitlines()] == [True] * 5
    r = run(["stats", "--in", "-"], subprocess_env, stdin=data)
    assert r.returncode == 0 and "op: n=5" in r.stdout.decode()
    r = run(["verify", "--in", "-"], subprocess_env, stdin=b'{"problem": "a"}\n')
    assert r.returncode == 2 and "standard input line 1" in r.stderr.decode()


def test_show_writes_png_to_stdout(subprocess_env):
    r = run(["show", "--preset", "tiny", "--out", "-"], subprocess_env)
    assert r.returncode == 0 and r.stdout[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_closed_pipe_ends_quietly(subprocess_env):
    """`generate ... | head -n 1`: the reader leaves after one line; no traceback, exit code 0."""
    proc = subprocess.Popen([sys.executable, "-m", "igsm", "generate", "--preset", "med", "--n", "100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env)
    first = proc.stdout.readline()
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert json.loads(first)["id"] == 0
    assert proc.returncode == 0 and err.decode() == ""
