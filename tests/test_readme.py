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
