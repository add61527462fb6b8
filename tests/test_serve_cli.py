"""`mat-fast serve` on the command line: what it says when the app extra is missing, when
it has no weights, when the port is taken, and when it listens beyond this machine."""

from __future__ import annotations

import importlib.util
import socket

import pytest

from mat_fast.cli import main


def test_without_the_app_extra_it_names_the_pip_command(monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):  # as if uvicorn were not installed
        return None if name == "uvicorn" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert main(["serve", "--random-weights"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "mat-fast: error: mat-fast serve needs the app extra: pip install 'mat_fast[app]'"
    ]


needs_app = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("starlette", "uvicorn", "python_multipart")),
    reason="mat-fast serve needs the app extra (pip install '.[app]')",
)


@needs_app
def test_without_weights_it_says_where_to_get_them(monkeypatch, capsys):
    monkeypatch.delenv("MAT_FAST_CHECKPOINT", raising=False)
    assert main(["serve"]) == 2
    assert "--random-weights" in capsys.readouterr().err


@needs_app
@pytest.mark.parametrize(
    "flags, words",
    [
        (["--max-megapixels", "0"], "--max-megapixels must be in (0, 170]"),
        (["--max-upload-mb", "-1"], "--max-upload-mb must be positive"),
        (["--dtype", "float64"], "--dtype must be one of"),
    ],
)
def test_bad_limits_are_refused_in_one_line(capsys, flags, words):
    assert main(["serve", "--random-weights", *flags]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1


@needs_app
def test_a_busy_port_fails_fast_before_the_model_loads(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", "--random-weights", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "pass another --port" in err
    assert "loading the model" not in err


@needs_app
def test_listening_beyond_loopback_warns_and_prints_the_url(monkeypatch, capsys):
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets: served.append(sockets))
    # 127.0.0.2 is not among the addresses the command takes as this machine only
    # (127.0.0.1, localhost, ::1), so it warns; yet nothing outside this machine reaches it.
    args = ["serve", "--random-weights", "--random-resolution", "256", "--device", "cpu"]
    assert main([*args, "--host", "127.0.0.2", "--port", "0"]) == 0
    out, err = capsys.readouterr()
    assert "warning: listening on 127.0.0.2: anyone who can reach this machine" in err
    assert len(served) == 1 and served[0][0].getsockname()[0] == "127.0.0.2"
    port = served[0][0].getsockname()[1]
    assert f"open http://127.0.0.2:{port}/" in out
    served[0][0].close()
