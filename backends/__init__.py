"""Backends: IR -> BPF C and tc-flower (later work)."""
