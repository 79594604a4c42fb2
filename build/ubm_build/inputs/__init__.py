"""What the model reads of a record: behaviour text and session features.

Pure code (standard library, numpy, a `tokenizers.Tokenizer` passed in) that training uses and
that the build copies next to Triton's ``preprocess`` model, so served inputs are trained inputs.
Imports nothing from ``ubm_build`` but its own modules.
"""
