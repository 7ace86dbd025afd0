"""Bad command lines get one clear line, never a traceback (issue 14, section 0): numbers out of
range are refused by argparse before anything loads; `mote serve` names a missing extra and a
--models that is not a folder."""

import builtins

import pytest

from mote.cli import main
from tests.tiny_models import write_tiny


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(write_tiny(tmp_path_factory.mktemp("cli-errors") / "tiny.gguf", "llama", ctx=64))


@pytest.mark.parametrize("argv, message", [
    (["serve", "--port", "99999", "--no-pull"], "99999 is out of range"),
    (["serve", "--port", "http", "--no-pull"], "expected a whole number"),
    (["bench", "MODEL", "--repeat", "0"], "0 is out of range"),
    (["bench", "MODEL", "-n", "-4"], "-4 is out of range"),
    (["generate", "MODEL", "-p", "x", "--ctx", "0"], "0 is out of range"),
    (["generate", "MODEL", "-p", "x", "-n", "0"], "0 is out of range"),
    (["generate", "MODEL", "-p", "x", "--dense-mb", "-1"], "is not a size"),
    (["generate", "MODEL", "-p", "x", "--dense-mb", "nan"], "is not a size"),
    (["logits", "MODEL", "-p", "x", "--top", "-3"], "-3 is out of range"),
    (["chat", "MODEL", "-n", "zero"], "expected a whole number"),
])
def test_out_of_range_numbers_are_refused_by_name(argv, message, capsys, model):
    argv = [model if a == "MODEL" else a for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err


def test_serve_without_the_server_extra_names_it(monkeypatch, capsys):
    real_import = builtins.__import__

    def no_fastapi(name, *args, **kwargs):
        if name == "fastapi" or name.startswith("fastapi."):
            raise ModuleNotFoundError("No module named 'fastapi'", name="fastapi")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_fastapi)
    assert main(["serve", "--no-pull"]) == 1
    err = capsys.readouterr().err
    assert "fastapi is not installed" in err and "pip install 'mote-engine[serve]'" in err


def test_serve_models_must_be_a_folder(capsys, model):
    assert main(["serve", "--models", model, "--no-pull"]) == 1
    assert "not a folder" in capsys.readouterr().err


def test_chat_with_stdin_closed_ends_cleanly(monkeypatch, capsys, model):
    def closed(prompt=""):
        raise EOFError

    monkeypatch.setattr(builtins, "input", closed)
    assert main(["chat", model, "-n", "2"]) == 0
    assert "Traceback" not in capsys.readouterr().err
