"""The checkers: proofs and differential tests that each lowering means the IR.

* ``flower``: IR vs flower filters (complete, symbolic) and the audit of installed filters;
* ``bpf``: the compiled slow path in the kernel (BPF_PROG_TEST_RUN) against the interpreter;
* ``frames``: packets as Ethernet frames and back, for the kernel-side checks.
"""
