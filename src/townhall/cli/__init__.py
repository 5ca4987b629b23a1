"""The ``townhall`` command line: the group and ``serve`` (``main``), settings as
options (``options``) and ``demo``."""
