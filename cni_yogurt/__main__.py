from cni_yogurt.entry import main

raise SystemExit(main())
