"""Entry script of the one-file binary: cni_yogurt.entry.main, with two frozen-only adjustments for CNI verbs.

1. Delegated plugins (IPAM) get the environment the runtime gave us, not the
   bootloader's: it points LD_LIBRARY_PATH at our unpack dir, so a dynamically
   linked delegate would load our bundled libz/libffi/libexpat instead of its
   own.  Changing os.environ now affects only children: glibc read
   LD_LIBRARY_PATH when this process started.
2. A CNI invocation is over once its result (or error) is on stdout: the
   runtime reads only that and the exit code.  Python's orderly shutdown
   (module teardown, GC, atexit) costs ~15-20 ms per exec after that, for
   nothing: the log sink flushes every line and a verb leaves no thread or
   child behind.  So a verb flushes its streams and leaves with os._exit.

The admin CLI (`yogurt demo`, `doctor`, ...) runs unchanged: the demo execs
this binary again, and the bootloader's variables let that reuse our unpack dir.
"""

import os
import sys

from cni_yogurt.entry import main

cni_verb = "CNI_COMMAND" in os.environ
if cni_verb:
    original = os.environ.pop("LD_LIBRARY_PATH_ORIG", None)
    if original is None:
        os.environ.pop("LD_LIBRARY_PATH", None)
    else:
        os.environ["LD_LIBRARY_PATH"] = original
    for name in [name for name in os.environ if name.startswith("_PYI_")]:
        del os.environ[name]

rc = main()
if cni_verb:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)
sys.exit(rc)
