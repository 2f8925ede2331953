"""The `hpo` command line: flags and environment -> option dataclasses -> one call into hpo.app -> print.

Importing the command modules registers their commands on the one Typer application, `cli`, in the
order `hpo --help` lists them: the search first, then the commands that read what it stored.
"""

from hpo.cli import search_commands as search_commands

# isort: split
from hpo.cli import read_commands as read_commands
from hpo.cli.base import cli

__all__ = ["cli"]
