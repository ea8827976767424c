"""A study: a sweep of fine-tuning runs, the laws fitted and tested on them, and one report.

:func:`~forgetscale.study.analysis.analyse` turns a results store into a
:class:`~forgetscale.study.analysis.StudyReport`;
:func:`~forgetscale.study.report.write_report` writes it as ``report.json`` and a
self-contained ``report.html``.
"""
