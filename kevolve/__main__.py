from kevolve.cli import main

raise SystemExit(main())
