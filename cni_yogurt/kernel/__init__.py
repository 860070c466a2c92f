"""Kernel edges: netlink (netkit devices, addresses, routes), netns, bpf syscalls, the bcc loader.

Importing any module here first registers pyroute2 as a bare package, so
that only the message classes we use are imported (see cni_yogurt._lean).
"""

from cni_yogurt._lean import bare_package

bare_package("pyroute2")
