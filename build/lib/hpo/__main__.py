from hpo.cli import app

app(prog_name="hpo")
