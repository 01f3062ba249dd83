"""The README's quickstart runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quickstart_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python quickstart"
    quickstart = blocks[0]
    assert len(quickstart.strip().splitlines()) == 3  # the promise: three lines
    exec(compile(quickstart, str(README), "exec"), {})
    out = capsys.readouterr().out
    assert "DemoResNet" in out and "MACs" in out and "latency" in out and "after/before" in out


def test_readme_shows_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
