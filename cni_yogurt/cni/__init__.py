"""The CNI protocol layer: pure parsing and rendering, plus the verb dispatcher.

Nothing here touches the kernel; `cni_yogurt.plugin` implements the verbs.
"""
