from gridm2m.cli import main

raise SystemExit(main())
