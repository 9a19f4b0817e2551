"""python -m edge: the hearth command."""

from edge.cli import main

main(prog_name="hearth")
