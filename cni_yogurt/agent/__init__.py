"""The node agent: one resident yogurt per node, reached by the exec'd plugin over a unix socket."""
