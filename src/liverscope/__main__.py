"""``python -m liverscope`` runs the command line."""

from liverscope.ui.cli import main

main()
