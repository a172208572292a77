"""Runtime: what talks to kernels and devices.

bcc loading and BPF syscalls (``bpf_loader``, ``bpf_syscall``, ``testrun``,
``kernel_clock``), tc/tcx attach (``tc_attach``), netlink (``netlink``, and for
flower ``flower_netlink``, ``flower_wire``, ``flower_installer``), the in-memory
NIC model (``nic_model``), the rule cache (``flow_cache``, ``simulate``) and the
agent (``runtime.agent``).
"""
