from onefit.cli import app

app(prog_name="onefit")
