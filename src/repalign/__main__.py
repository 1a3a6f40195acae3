from repalign.cli import main

raise SystemExit(main())
