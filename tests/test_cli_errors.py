"""handle_errors: each kind of failure a command can meet becomes its exit code and one line."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.helpers import REPO_ROOT

# A command wrapped as every CLI command is, raising the exception named on the command line.
_RAISE = textwrap.dedent(
    """
    import sys
    import click
    from streamproc.cli import handle_errors, main

    @main.command("raise-it")
    @click.argument("kind")
    @handle_errors
    def raise_it(kind: str) -> None:
        if kind == "pipe":
            raise BrokenPipeError
        if kind == "wire":
            from streamproc.wire import ConnectionLost
            raise ConnectionLost("Connection refused")
        if kind == "redis":
            import redis
            raise redis.ConnectionError("Error 111 connecting. Connection refused.")
        raise ValueError("a bug")

    main(["raise-it", sys.argv[1]])
    """
)


@pytest.mark.parametrize(
    ("kind", "code", "text"),
    [
        ("pipe", 0, ""),
        ("wire", 3, "streamproc: cannot reach Redis at "),
        ("redis", 3, "streamproc: cannot reach Redis at "),
        ("other", 1, "ValueError: a bug"),
    ],
)
def test_each_failure_becomes_its_exit_code(kind: str, code: int, text: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _RAISE, kind],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == code, done.stderr
    assert text in done.stderr
    if code == 3:
        assert done.stderr.rstrip().endswith("Connection refused")
    if kind != "other":
        assert "Traceback" not in done.stderr
