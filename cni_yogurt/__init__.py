"""cni-yogurt: a CNI plugin wiring two containers with netkit devices and eBPF."""

# The release, following semantic versioning: its only home (pyproject.toml reads it from
# here). What each release changed, and from which releases lines move in place: CHANGELOG.md.
__version__ = "0.6.0"
