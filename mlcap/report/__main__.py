"""`python -m mlcap.report <sweep folder>`: see mlcap.report.cli."""

from mlcap.report.cli import main

raise SystemExit(main())
