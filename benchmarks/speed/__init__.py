"""The parts of ``benchmarks/model_speed.py``, one module each.

* :mod:`.common`: models, steps, interleaved timing, medians, the machine line;
* :mod:`.timing`: the ``train``, ``infer`` and ``scaling`` parts;
* :mod:`.memory`: the ``memory`` part (fresh processes, peak RSS);
* :mod:`.micro`: the ``micro`` part (single kernels against stock ops);
* :mod:`.levers`: the ``levers`` part (ours with one optimisation undone at a time);
* :mod:`.report`: the Markdown tables.

``model_speed.py`` puts ``benchmarks/`` on ``sys.path`` (it is the script's
folder), so these import as ``speed.*``.
"""
