"""``python -m liverscope`` runs the command line."""

from liverscope.cli import main

main()
