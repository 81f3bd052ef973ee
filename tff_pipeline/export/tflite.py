"""SavedModel -> TFLite conversion with builtin ops only.

A Flex (select TF) op would convert only with SELECT_TF_OPS and then fail at the first call on
the device; converting with TFLITE_BUILTINS alone makes that a conversion-time error instead.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

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
