"""Rewrite the README's table of record fields from harness/records.py (tests/test_records.py
keeps them equal). Run: python scripts/readme_fields.py"""

from pathlib import Path

from fwbench.harness import records

README = Path(__file__).resolve().parents[1] / "README.md"
text = README.read_text()
start = text.index("\n", text.index("<!-- record fields")) + 1
end = text.index("<!-- end of record fields -->")
README.write_text(text[:start] + records.fields_markdown() + text[end:])
