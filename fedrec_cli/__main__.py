"""`python -m fedrec_cli` is `fedrec`."""

from fedrec_cli.main import entry

entry()
