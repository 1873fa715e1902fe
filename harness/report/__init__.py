"""Reports: analysis, verdicts, compare, Markdown, HTML, terminal tables, exports."""
