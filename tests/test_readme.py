"""The README's five-step training example runs and gives the fit it promises."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_five_step_example():
    if not README.exists():
        pytest.skip("README.md not next to the tests (installed test run)")
    code = re.search(r"## The five steps of learning\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert abs(ns["model"].weight.item() - 20.0) < 1e-2
    assert abs(ns["model"].bias.item() - 100.0) < 5e-2


def test_readme_gpt_example(tmp_path, monkeypatch):
    if not README.exists():
        pytest.skip("README.md not next to the tests (installed test run)")
    text = README.read_text()
    code = re.search(r"## Training a GPT\n.*?```python\n(.*?)```", text, re.S).group(1)
    # every line but the Hugging Face load (it needs a downloaded GPT-2 directory)
    code = "\n".join(line for line in code.splitlines() if "from_pretrained" not in line)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["logits"].shape == (1, 4, 256) and 0 < float(ns["loss"].data) < 10
    assert ns["out"].shape == (1, 24) and (ns["out"][:, :4] == ns["idx"]).all()
    from fusegrad.models import GPT
    again = GPT.load(tmp_path / "ckpt")
    assert all((a.data == b.data).all() for a, b in zip(again.parameters(), ns["model"].parameters()))
