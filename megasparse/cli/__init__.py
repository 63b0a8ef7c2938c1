"""Command-line entry points: ``megasparse <command>`` and the scripts in ``tools/``.

Each command is a module here with ``main(argv, prog) -> exit status``; the scripts in
``tools/`` (Megatron-style names) call the same functions, so both spellings behave alike.
"""
