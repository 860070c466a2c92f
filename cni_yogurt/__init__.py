"""cni-yogurt: a CNI plugin wiring two containers with netkit devices and eBPF."""

__version__ = "0.1.0"
