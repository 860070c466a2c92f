"""Kernel edges: netlink (netkit devices, addresses, routes), netns, bpf syscalls, the bcc loader."""
