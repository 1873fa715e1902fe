"""``python -m fwbench.harness.cli``: the fwbench command."""

from fwbench.harness.cli import main

main()
