"""`python -m kmnist_fa ...` behaves exactly like the installed `kmnist-fa ...` (full install or runtime only)."""
from .launcher import main

main()
