"""The BPF slow-path backend: IR -> C that bcc compiles against ``bpf/``.

``lower(policy)`` is the entry point; ``tables`` builds the classifier's
per-field tables, ``abi`` holds the map names, sizes and struct layouts the
generated program shares with the loader.
"""

from backends.bpf.emit import lower

__all__ = ["lower"]
