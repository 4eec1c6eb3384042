"""`python -m semcache_server.calibration`: the same as `semcache calibrate`."""

from semcache_server.calibration.command import main

raise SystemExit(main())
