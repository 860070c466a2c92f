"""Lines: which two containers share a wire.

A line is a name; each container attachment (containerID + ifname) joins
exactly one line, and a line has at most two ends.  Membership lives in one
file per line under `<stateDir>/lines/`, under a flock, and is mirrored into
the pinned pairing map once both ends are ready.
"""
