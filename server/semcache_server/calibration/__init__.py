"""Offline calibration of the semantic hit policy: the data files (`data`), the fit (`fitting`)
and the `semcache calibrate` command (`command`). Never imported by the serving path."""
