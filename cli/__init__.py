"""cheapconv's command line (installed as the ``cheapconv_cli`` package; see setup.cfg). Its entry point is
:func:`cheapconv_cli.main.run`; the package itself exports nothing."""

__all__: list[str] = []
