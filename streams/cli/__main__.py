"""`python -m streams.cli` runs the `leadflow` command (the test harness starts workers so)."""

from streams.cli import main

main()
