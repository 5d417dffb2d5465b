"""README block extraction and its markers."""

from __future__ import annotations

from pathlib import Path

from tests.readme.blocks import parse

DOC = """# title

<!-- readme-test: fixture -->
```bash
make serve
```

text

<!-- readme-test: skip (needs a GPU) -->

```python
import torch
```

- a list item:

  ```sh
  echo indented
  ```

~~~console
$ echo tilde
~~~

```
plain map
```

```yaml
kind: Deployment
```
"""


def _parsed(tmp_path: Path, text: str):
    path = tmp_path / "README.md"
    path.write_text(text)
    return parse(path)


def test_blocks_lines_languages_and_markers(tmp_path: Path) -> None:
    parsed = _parsed(tmp_path, DOC)
    assert parsed.problems == []
    got = [(b.line, b.language, b.marker, b.reason) for b in parsed.blocks]
    assert got == [
        (4, "bash", "fixture", None),
        (12, "python", "skip", "needs a GPU"),
        (18, "sh", None, None),
        (22, "console", None, None),
        (26, "", None, None),
        (30, "yaml", None, None),
    ]
    assert parsed.blocks[2].code == "echo indented\n"
    assert [b.runnable for b in parsed.blocks] == [True, True, True, True, False, False]
    assert [b.text_only for b in parsed.blocks] == [False, False, False, False, True, True]
    assert parsed.blocks[0].id == "L4-bash" and parsed.blocks[4].id == "L26-plain"


def test_bad_markers_are_problems(tmp_path: Path) -> None:
    parsed = _parsed(
        tmp_path,
        "<!-- readme-test: skip -->\n```bash\nls\n```\n"
        "<!-- readme-test: ignore (why) -->\n```bash\nls\n```\n"
        "<!-- readme-test: fixture -->\nsome prose\n\n```bash\nls\n```\n"
        "<!-- readme-test: skip (dangling) -->\n",
    )
    assert len(parsed.problems) == 4
    assert "line 1: a skip needs its reason" in parsed.problems[0]
    assert "line 5: unknown marker 'ignore (why)'" in parsed.problems[1]
    assert "line 9: marker not followed by a code block" in parsed.problems[2]
    assert "line 15: marker not followed by a code block" in parsed.problems[3]
    assert parsed.blocks[2].marker is None  # the fixture marker was cut off by prose


def test_the_readme_parses_without_problems() -> None:
    parsed = parse(Path(__file__).resolve().parents[2] / "README.md")
    assert parsed.problems == []
    assert any(b.language == "bash" for b in parsed.blocks)
    assert any(b.language == "python" for b in parsed.blocks)
