"""``python -m streams``: the ``photoclust`` command line."""

from streams.cli import main

main(prog_name="photoclust")
