"""The built-in classical segmenter: body outline, lungs, trachea, spinal cord and bone, without any weights."""
