"""SavedModel -> TFLite conversion with builtin ops only, and a check that every signature runs.

A Flex (select TF) op would convert only with SELECT_TF_OPS and then fail at the first call on
the device; converting with TFLITE_BUILTINS alone makes that a conversion-time error instead.
The check afterwards runs every signature once in the LiteRT interpreter the device uses.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from tff_pipeline.export.ondevice_model import OnDeviceModel


def convert(module: OnDeviceModel) -> bytes:
    """The module as a .tflite flatbuffer (builtin ops, resource variables)."""
    signatures = module.signatures()
    with tempfile.TemporaryDirectory(prefix="fedrec-export-") as tmp:
        saved = Path(tmp) / "saved_model"
        tf.saved_model.save(module, str(saved), signatures=signatures)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved), signature_keys=list(signatures))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.experimental_enable_resource_variables = True
        return converter.convert()


def smoke_test(model_bytes: bytes, num_items: int, dim: int) -> None:
    """Run every signature once in LiteRT; raises if any fails (e.g. an unsupported op)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_bytes)
    runners = {name: interpreter.get_signature_runner(name) for name in interpreter.get_signature_list()}
    ids = np.arange(min(3, num_items), dtype=np.int32)
    stars = np.full(len(ids), 4.0, np.float32)
    weights = runners["get_weights"]()
    runners["set_global"](item_embeddings=weights["item_embeddings"], item_bias=weights["item_bias"],
                          global_mean=weights["global_mean"])
    runners["set_user"](user_embedding=np.zeros(dim, np.float32), user_bias=np.zeros((), np.float32))
    runners["personalize"](item_ids=ids, ratings=stars)
    runners["client_update"](item_ids=ids, ratings=stars)
    runners["infer"](item_ids=ids)
    top = runners["topk"](k=np.array(min(5, num_items), np.int32))
    if len(top["item_ids"]) != min(5, num_items):
        raise RuntimeError(f"topk returned {len(top['item_ids'])} items")
