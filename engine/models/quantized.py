"""int8 weights through ONNX Runtime: about twice fp32's throughput on a CPU, for long batches
and quick queries, as a model entry of its own (`quantize: int8`, e.g. `minilm-int8`).

Made once from the model's verified fp32 export (`onnx_runtime`) by ONNX Runtime's dynamic
quantisation of the MatMul weights, per channel (per tensor, MiniLM's mean cosine to fp32 drops
to 0.95). Its vectors differ from fp32's, which is why it has its own name and so its own
fingerprint, cache entries and indexes. Before first use it is compared with the fp32 export on
fixed probe texts; a mean cosine under MIN_MEAN_COSINE refuses it. The result and the checksums
are recorded in `int8/verified.json`; later loads check the checksums alone, and a mismatch makes
it again from the fp32 export (no torch needed while that export holds).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from engine.models.onnx_runtime import (
    GRAPH,
    OnnxRunner,
    install,
    load_verified,
    read_record,
    refuse,
)

INT8_DIR = "int8"
MIN_MEAN_COSINE = 0.99
QUANTIZATION = "dynamic int8, MatMul weights, per channel"
# Queries and passages of the lengths the model meets, in the window and past it.
PROBE_TEXTS = [
    "how do black holes form",
    "best sourdough starter ratio",
    "Why does the sea rise and fall twice a day?",
    "Index funds spread money over many stocks; bonds pay fixed interest instead.",
    "The mitochondrion is the site of oxidative phosphorylation in eukaryotic cells.",
    "Café owners in Zürich reported a 12% rise in prices — naïve estimates said 3%.",
    "def quantize(weights): return np.round(weights / scale).astype(np.int8)",
    "Vaccination coverage of 95% is needed to interrupt measles transmission.",
    "A lively starter, a long cold proof and a very hot oven make a crisp crust.",
    "Transformers replaced recurrent networks for most sequence tasks after 2017.",
    "The court held that the contract was void for lack of consideration.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    " ".join(
        [
            "Tides are caused by the gravitational pull of the Moon and, to a lesser degree,",
            "the Sun on the Earth's oceans; the bulge on the far side comes from inertia.",
        ]
        * 6
    ),
    " ".join(
        [
            "Dietary fibre slows the absorption of sugar, feeds gut bacteria and is linked",
            "with lower rates of heart disease in large cohort studies over decades.",
        ]
        * 12
    ),
    " ".join(["Scaling laws relate loss to parameters, data and compute."] * 30),
    "COVID-19 ACE2 receptor binding affinity of the spike protein",
]


def _not_onnxruntime(record: logging.LogRecord) -> bool:
    """ONNX Runtime's quantiser gives advice on the root logger, which would reach the terminal
    of a command; it is not for the user."""
    return "onnxruntime" not in record.pathname


def quantize_verified(
    fp32: OnnxRunner,
    source: Path,
    folder: Path,
    tokenizer: Any,
    digest: str,
    *,
    threads: int,
) -> OnnxRunner:
    """Quantise the verified fp32 export in `source` into `folder`, compare it with `fp32` on
    PROBE_TEXTS and record the result; returns the int8 runner, or raises ModelError (recorded,
    so later loads do not quantise again until torch or ONNX Runtime changes)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().addFilter(_not_onnxruntime)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".quantize-", dir=folder))
    shape = {"pad_id": fp32.pad_id, "dimension": fp32.dimension, "max_length": fp32.max_length}
    try:
        try:
            # Weights go to GRAPH + ".data", i.e. WEIGHTS, as in the fp32 export.
            quantize_dynamic(
                source / GRAPH,
                staging / GRAPH,
                op_types_to_quantize=["MatMul"],
                per_channel=True,
                weight_type=QuantType.QInt8,
                use_external_data_format=True,
            )
            probe = OnnxRunner(staging / GRAPH, tokenizer, threads=threads, **shape)
            cosines = np.sum(probe.encode(PROBE_TEXTS) * fp32.encode(PROBE_TEXTS), axis=1)
            del probe
        except OSError:
            raise  # a full disk or a permission: not the model's fault, so nothing is recorded
        except Exception as exc:
            refuse(folder, digest, f"the int8 quantisation of this model does not run ({exc})")
        mean = float(np.mean(cosines))
        if mean < MIN_MEAN_COSINE:
            refuse(
                folder,
                digest,
                f"the int8 model is too far from fp32 (mean cosine {mean:.4f} on "
                f"{len(PROBE_TEXTS)} probe texts, needs {MIN_MEAN_COSINE}); use the fp32 model",
            )
        source_record = read_record(source) or {}
        install(
            staging,
            folder,
            {
                "fingerprint": digest,
                "quantization": QUANTIZATION,
                "mean_cosine": mean,
                "min_cosine": float(np.min(cosines)),
                "min_mean_cosine": MIN_MEAN_COSINE,
                "probes": len(PROBE_TEXTS),
                "source_files": source_record.get("files"),
                **shape,
            },
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return load_verified(folder, tokenizer, digest, threads=threads)
