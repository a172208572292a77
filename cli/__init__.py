"""The ``flowc`` command line: argument parsing, dispatch, one module per command."""
