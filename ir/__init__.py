"""The IR: field registry, values, interpreter, header-space algebra, analyses, passes."""
