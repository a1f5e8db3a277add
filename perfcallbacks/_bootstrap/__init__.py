"""Child-process bootstrap of ``perfhints run``.

``perfhints run`` puts this directory first on the child's ``PYTHONPATH``.
Python then imports our ``sitecustomize`` at start-up, which installs
:mod:`_perfhints_hook` only when ``PERFHINTS_RUN_CONFIG`` is set. Nothing here
imports torch, Lightning or transformers: the trainers are patched when the
program itself imports them.
"""
