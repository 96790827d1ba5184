"""Synthetic BraTS-like training data.

- :mod:`scripts.synthetic.generator` (with :mod:`~scripts.synthetic.anatomy`, :mod:`~scripts.synthetic.tumour`,
  :mod:`~scripts.synthetic.intensity` and :mod:`~scripts.synthetic.fields`): the domain-randomised generator built
  on real anatomy (nilearn's MNI152 2009 grey/white-matter maps) that the shipped weights are trained on.
  Command line: ``python -m scripts.synthetic.generator --output_dir D --num_cases N``.
- :mod:`scripts.synthetic.phantom`: a small geometric phantom, fast enough for tests and the quick-start data.

Submodules are imported explicitly (``from scripts.synthetic import generator``); this file imports nothing.
"""
