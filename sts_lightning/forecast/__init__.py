"""Stage 3, the forecast before training: settings, the extraction engine, :func:`predict`,
the :class:`Prediction` it returns, and the ``sts-lightning predict`` job."""
