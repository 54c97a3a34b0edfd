"""`python -m streamproc` runs the CLI."""

from streamproc.cli import main

main()
