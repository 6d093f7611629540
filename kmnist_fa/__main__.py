"""`python -m kmnist_fa ...` behaves exactly like the installed `kmnist-fa ...`."""
from .cli import app

app(prog_name="kmnist-fa")
