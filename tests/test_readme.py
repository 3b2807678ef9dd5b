"""The README's library example runs as written (it keeps the README true)."""

import pathlib
import re

import pytest


@pytest.mark.slow
def test_readme_library_example_runs(capsys):
  text = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
  blocks = re.findall(r"```python\n(.*?)```", text, re.S)
  assert blocks, "README.md has no python example"
  exec(compile(blocks[0], "README.md", "exec"), {})
  out = capsys.readouterr().out
  assert out.startswith("|") and out.count("~") == 6  # the derived NAS-Bench-201 genotype
