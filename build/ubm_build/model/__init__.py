"""The behaviour model (`network`), its training and calibration (`train`), the baselines under
the same rules (`baselines`), quality metrics (`quality`) and the model card (`card`).

Imports `inputs` and `data`.
"""
