"""The parts of scripts/chaos.py, one job a module.

- `app`: the APP module the daemons serve (written into the work folder) and its step log.
- `plan`: the seeded schedule of chaos actions (the same seed, the same plan).
- `target`: the store under test: URLs, raw SQL behind the store's back, the driver's
  own store, and the mailbox's final answers.
- `fleet`: the `stageline serve` processes: start, kill -9, SIGTERM, reap.
- `actions`: what each planned action does (posts, kills, damage, poison, aborts).
- `settle`: after the chaos, let every run end or pause, then stop the daemons.
- `verdict`: the checks (tests/invariants.py, the step log, the mailbox) and the figures.
- `report`: the summary printed at the end.
"""
