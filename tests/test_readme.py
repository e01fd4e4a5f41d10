"""The README's Python example runs (scaled down so the test stays fast)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    code = re.search(r"## In Python\s+```python\n(.*?)```", text, re.S).group(1)
    replacements = {
        "range(0, 2000)": "range(0, 40)",
        'epochs=3)': 'steps=3, batch_size=32, progress=False, num_workers=0)',
        "range(100_000, 105_000)": "range(100_000, 100_050)",
        "range(200_000, 201_000)": "range(200_000, 200_500)",  # 10/FPIR = 1,000 searches
        '"./gallery"': repr(str(tmp_path / "gallery")),
    }
    for old, new in replacements.items():
        assert old in code, f"README example changed: {old!r} not found; update this test"
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
