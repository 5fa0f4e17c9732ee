"""The command-line layer: one module of click commands per area, assembled by ``cli.py``.

Each command parses its options, calls one library function and prints. Nothing below the command
layer imports these modules (the import-graph test guards it).
"""
