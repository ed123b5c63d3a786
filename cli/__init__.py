"""cheapconv's command line (installed as the ``cheapconv_cli`` package; see setup.cfg)."""
