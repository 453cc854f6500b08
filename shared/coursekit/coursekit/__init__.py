"""coursekit: the instructor's and maintainer's tools of the open LLM course (no torch).

``grading`` (``make grade``: collect, rebuild, run, score, report), ``gradeworker`` (the sandboxed process
that runs one notebook: ``python -m coursekit.gradeworker``), ``sandbox`` (bubblewrap and resource
limits), ``nbtools`` (execute the demos, generate the labs, the Colab stamp), ``bench`` (``make bench``)
and ``course`` (where the course lives). Students never need this package: notebooks and labs import only
the student library ``llmcourse``, which never imports ``coursekit``. Nothing here imports torch, so a
grading worker loads torch only when a lab's own cells import it.
"""

__version__ = "0.1.0"
