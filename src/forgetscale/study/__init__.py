"""A study: a sweep of fine-tuning runs, the laws fitted and tested on them, and one report.

:func:`~forgetscale.study.analysis.analyse` turns a results store into a
:class:`~forgetscale.study.analysis.StudyReport`;
:func:`~forgetscale.study.report.write_report` writes it as ``report.json`` and a
self-contained ``report.html``.

The modules, in pipeline order:

- ``runner``: the study command (the sweep, then the analysis and the report);
- ``config``: the ``analysis:`` block, the targets, their symbols and the thresholds;
- ``analysis``: :func:`analyse`, composing the parts below into a ``StudyReport``;
- ``runs``: the runs read from the store, their labels, measurements and downstream rows;
- ``fits``: the laws per target, held-out runs and steps, ranking, the best law;
- ``predictions``: what would rank r forget;
- ``noise``: the noise floor, the seed spread, hard against soft L_f;
- ``forgotten``: the most-forgotten blocks of the largest rank;
- ``paper``: the paper's constants beside this study's;
- ``checks``: the acceptance criteria;
- ``figure_data``: the data behind each figure; ``forgetscale.figures`` draws it;
- ``report``: the page's order and the writer; ``sections`` and ``findings``: the page's
  sections; ``markup``: its style, cells and tables;
- ``numbers``: a finite float or None, and short text for numbers.
"""
