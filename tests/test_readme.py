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


def test_readme_says_how_to_run_the_torch_parity_tests_and_they_skip_without_torch():
    import os
    import subprocess
    import sys
    if not README.exists():
        pytest.skip("README.md not next to the tests (installed test run)")
    text = " ".join(README.read_text().split())
    assert "skip when torch is not installed" in text and 'pip install ".[test,torch]" && python -m pytest' in text
    assert re.search(r'^torch = \["torch>=', (README.parent / "pyproject.toml").read_text(), re.M)   # that extra
    # with torch unimportable, the parity tests are reported as skipped, not failed
    tests = Path(__file__).resolve().parent
    code = ("import sys, pytest; sys.modules['torch'] = None; "
            f"sys.exit(pytest.main(['-q', '-rs', '-p', 'no:cacheprovider', {str(tests / 'test_torch_habits.py')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tests,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert re.search(r"\d+ passed, \d+ skipped", r.stdout) and "could not import 'torch'" in r.stdout, r.stdout[-3000:]
