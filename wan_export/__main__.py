"""`python -m wan_export` runs the command-line interface."""
from wan_export.cli import main

main()
