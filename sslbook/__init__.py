"""sslbook: contrastive self-supervised learning for vision, in small readable modules.

The package behind the sslbook Jupyter Book. Each chapter's notebook imports it; nothing
in the book re-implements what lives here.
"""

__version__ = "0.1.0"
