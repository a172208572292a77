"""The flowc DSL front end: grammar, parser, checks, lowering to IR, CLI."""
