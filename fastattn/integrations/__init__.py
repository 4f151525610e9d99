"""Bridges to other libraries (imported on demand, never at ``import fastattn``).

* :mod:`fastattn.integrations.transformers`: ``attn_implementation="fastattn"`` for Hugging Face models.
"""
