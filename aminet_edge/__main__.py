"""`python -m aminet_edge` = the `aminet-edge` command."""

from aminet_edge.cli import main

main()
