"""A small budget of scripts/fuzz.py's generators in CI (the volumes run from the script itself):
every campaign, a few hundred cases, no case outside the allowed outcomes."""

import importlib.util
import json

from tests.paths import ROOT


def test_fuzz_campaigns_small_budget(capsys):
    spec = importlib.util.spec_from_file_location("fuzz", ROOT / "scripts" / "fuzz.py")
    fuzz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz)
    code = fuzz.main(["--scale", "0.003", "--seed", "11", "--json"])
    reports = json.loads(capsys.readouterr().out)
    assert {r["campaign"] for r in reports} == {"gguf", "safetensors", "atome", "tokenizer"}
    assert all(r["cases"] >= 60 for r in reports)
    assert code == 0, [r["first_failures"] for r in reports if r["failures"]]
