from hpo.cli import cli

cli(prog_name="hpo")
