"""The ``edgekit`` command. Thin: each module parses options and calls one library function."""
