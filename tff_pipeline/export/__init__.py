"""Export of a trained run to a TensorFlow Lite model package for devices."""
