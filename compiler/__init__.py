"""The flowc DSL front end: grammar, parser, name/type checks, lowering to IR, diagnostics, fmt."""
