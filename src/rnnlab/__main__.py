from rnnlab.cli import entry

raise SystemExit(entry())
