"""Integrations with other libraries; each submodule imports its library only when used.

``fastdl.integrations.transformers``: fastdl's attention as a Hugging Face transformers
attention implementation (``attn_implementation="fastdl"``).
"""
