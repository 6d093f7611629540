"""`python cli.py ...` from a checkout behaves exactly like the installed `kmnist-fa ...`."""
from kmnist_fa.cli import app

if __name__ == "__main__":
    app(prog_name="kmnist-fa")
