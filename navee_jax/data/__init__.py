"""Sources -> catalogue -> split -> tf.data batches."""
